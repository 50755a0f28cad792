"""06: interoperability with other MQTT implementations: the Eclipse Paho C library,
mosquitto_rr (MQTT 5 request/response) and MQTT.js from npm, each against the stack."""
import os
import subprocess
import threading
import time

import pytest

import lk

HERE = os.path.dirname(os.path.abspath(__file__))
MQTTJS = os.path.join(HERE, "..", "interop", "mqttjs")


@pytest.fixture(autouse=True)
def _need(stack):
    stack.require("router", "session-store", "auth", "mqtt-frontend-1", "mqtt-frontend-2")


@pytest.mark.parametrize("version", ["3", "5"])
def test_paho_c(stack, version):
    exe = os.path.join(lk.build_dir(), "test", "interop-paho-c")
    p = subprocess.run([exe, str(stack.mqtt_port), version], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 0, p.stderr + p.stdout


def test_mosquitto_rr(stack):
    # a responder answers on the response topic with the correlation data; mosquitto_rr
    # (MQTT 5 only) prints the response
    with lk.paho_client(stack, "rr-responder", protocol=lk.MQTTv5) as resp:
        resp.subscribe("rr/service", 1)

        def answer():
            m = resp.messages.get(timeout=10)
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties
            rp = Properties(PacketTypes.PUBLISH)
            if hasattr(m.properties, "CorrelationData"):
                rp.CorrelationData = m.properties.CorrelationData
            resp.publish(m.properties.ResponseTopic, b"pong:" + m.payload, qos=1, properties=rp)

        t = threading.Thread(target=answer)
        t.start()
        p = subprocess.run(["mosquitto_rr", "-h", "127.0.0.1", "-p", str(stack.mqtt_port),
                            "-t", "rr/service", "-e", "rr/reply/1", "-m", "ping", "-W", "10"],
                           capture_output=True, text=True, timeout=20)
        t.join(15)
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == "pong:ping"


def _npm_ready():
    if os.path.isdir(os.path.join(MQTTJS, "node_modules", "mqtt")):
        return
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=MQTTJS, check=True,
                   capture_output=True, timeout=300)


@pytest.mark.parametrize("version", ["4", "5"])
def test_mqttjs(stack, version):
    _npm_ready()
    p = subprocess.run(["node", "roundtrip.js", "mqtt://127.0.0.1:%d" % stack.mqtt_port, version],
                       cwd=MQTTJS, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr + p.stdout
