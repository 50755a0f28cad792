"""The OTA topics as an attacker sees them: with the shipped configuration (anonymous
clients allowed, no ACL file) nobody but a registered device's own token may publish on
or read `tb/#` and `lk/ota/#`, so a device's report cannot be faked (it decides a
rollout's success) and its chunks or signed URLs cannot be read by others."""
import json

import pytest

import lk
from lockhelp import cli
import otahelp as oh


@pytest.fixture(autouse=True)
def need(stack):
    stack.require("ota-distributor", "auth", "router", "mqtt-frontend-1")


def _admin(stack, name):
    cli(stack, "passwd", name, "pw-" + name)
    cli(stack, "user", "superuser", name, "on")
    return lk.paho_client(stack, name + "-c", username=name, password="pw-" + name)


def test_anonymous_cannot_fake_or_read_a_device(stack):
    (tb_id, tb_tok), = oh.devices(stack, "sectb", 1, "secm", "1.0")
    (lk_id, lk_tok), = oh.devices(stack, "seclk", 1, "secm", "1.0", protocol="lk")
    with _admin(stack, "sec-admin") as adm, \
            lk.paho_client(stack, "sec-anon") as anon, \
            lk.paho_client(stack, tb_id, username=tb_tok) as dev:
        adm.subscribe("tb/%s/#" % tb_id, qos=1)
        adm.subscribe("lk/ota/%s/#" % lk_id, qos=1)
        anon.subscribe("#", qos=1)
        # the anonymous client's fake reports never reach the bus
        anon.publish("tb/%s/v1/devices/me/telemetry" % tb_id,
                     json.dumps({"fw_state": "UPDATED", "current_fw_version": "9.9"}), qos=1)
        anon.publish("lk/ota/%s/status" % lk_id,
                     json.dumps({"model": "secm", "version": "9.9", "state": "UPDATED"}), qos=1)
        adm.messages.expect_none(quiet=1.0)
        # the device's own report does, and the anonymous wildcard subscriber reads none of it
        dev.publish("v1/devices/me/telemetry", '{"fw_state": "DOWNLOADING"}', qos=1)
        got = adm.wait_for(1)[0]
        assert got.topic == "tb/%s/v1/devices/me/telemetry" % tb_id
        anon.messages.drain(quiet=1.0)
        leaked = [m.topic for m in anon.messages.all]
        assert not [t for t in leaked if t.startswith(("tb/", "lk/ota/"))], leaked
    devs = json.loads(cli(stack, "ota", "devices", "--model", "secm", "--json").stdout)
    assert devs and all(d.get("version") != "9.9" for d in devs), devs
