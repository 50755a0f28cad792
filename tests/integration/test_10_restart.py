"""10: restarts. Retained messages and persistent sessions (with queued messages) survive a
restart of the whole stack; a SIGKILLed router, session store, or frontend that does not
hold the subscriber comes back within a second and traffic resumes without the connected
clients reconnecting."""
import re
import subprocess
import time

import pytest

import lk


@pytest.fixture(autouse=True)
def _need(stack):
    stack.require("router", "session-store", "auth", "mqtt-frontend-1", "mqtt-frontend-2")


def frontend_of(stack, client):
    """The s6 service name of the frontend holding a paho client's connection."""
    local_port = client.paho.socket().getsockname()[1]
    out = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True,
                         text=True, timeout=10).stdout
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[2].endswith(":%d" % stack.mqtt_port) \
                and cols[3].endswith(":%d" % local_port):
            pid = int(re.search(r"pid=(\d+)", line).group(1))
            for svc in ("mqtt-frontend-1", "mqtt-frontend-2"):
                if stack.svc_pid(svc) == pid:
                    return svc
    raise AssertionError("no frontend holds local port %d" % local_port)


def publish_until_received(pub, sub, topic, timeout=5.0):
    """Publishes QoS 1 probes until one arrives; returns seconds it took."""
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < timeout:
        i += 1
        try:
            pub.publish(topic, "probe-%d" % i, qos=1, timeout=1)
        except TimeoutError:
            continue
        got = sub.messages.drain(quiet=0.3, timeout=0.6)
        if any(m.topic == topic for m in got):
            return time.monotonic() - t0
    raise AssertionError("no traffic on %s within %.1fs" % (topic, timeout))


def test_whole_stack_restart_keeps_retained_and_sessions(stack):
    lk.mosquitto_pub(stack, "rs/retained", "kept", qos=1, retain=True)
    c = lk.paho_client(stack, "rs-persist", clean_session=False)
    c.subscribe("rs/queue", 1)
    c.disconnect()
    lk.mosquitto_pub(stack, "rs/queue", "queued-before-restart", qos=1)

    stack.restart_all()

    c = lk.paho_client(stack, "rs-persist", clean_session=False)
    assert c.session_present
    assert c.wait_for(1, timeout=10)[0].text == "queued-before-restart"
    c.disconnect()
    with lk.paho_client(stack, "rs-new") as s:
        s.subscribe("rs/retained", 1)
        m = s.messages.get(timeout=10)
        assert (m.text, m.retain) == ("kept", True)


@pytest.mark.parametrize("svc", ["router", "session-store"])
def test_kill_service_traffic_resumes(stack, svc):
    with lk.paho_client(stack, "k-sub-" + svc, clean_session=False) as sub, \
            lk.paho_client(stack, "k-pub-" + svc) as pub:
        sub.subscribe("kill/" + svc, 1)
        publish_until_received(pub, sub, "kill/" + svc)
        t0 = time.monotonic()
        stack.kill(svc)
        back = time.monotonic() - t0
        assert back < 1.5, "%s took %.2fs to come back" % (svc, back)
        took = publish_until_received(pub, sub, "kill/" + svc, timeout=5)
        assert took < 3.0
        # nobody had to reconnect
        assert not sub.disconnected.is_set() and not pub.disconnected.is_set()


def test_kill_other_frontend_traffic_resumes(stack):
    with lk.paho_client(stack, "kf-sub") as sub:
        held_by = frontend_of(stack, sub)
        other = "mqtt-frontend-2" if held_by == "mqtt-frontend-1" else "mqtt-frontend-1"
        # a publisher on the same frontend as the subscriber keeps its connection
        for i in range(20):
            pub = lk.paho_client(stack, "kf-pub-%d" % i)
            if frontend_of(stack, pub) == held_by:
                break
            pub.disconnect()
        else:
            pytest.fail("could not land a publisher on %s" % held_by)
        sub.subscribe("kill/fe", 1)
        publish_until_received(pub, sub, "kill/fe")
        stack.kill(other)
        publish_until_received(pub, sub, "kill/fe", timeout=3)
        assert not sub.disconnected.is_set() and not pub.disconnected.is_set()
        pub.disconnect()


def test_router_kill_keeps_queued_for_offline_persistent(stack):
    c = lk.paho_client(stack, "rk-persist", clean_session=False)
    c.subscribe("rk/q", 1)
    c.disconnect()
    stack.kill("router")
    # the router rebuilt its index from the session store: the offline session still matches
    for i in range(3):
        lk.mosquitto_pub(stack, "rk/q", "m%d" % i, qos=1, timeout=15)
    c = lk.paho_client(stack, "rk-persist", clean_session=False)
    assert [m.text for m in c.wait_for(3, timeout=10)] == ["m0", "m1", "m2"]
    c.disconnect()
