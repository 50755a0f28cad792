"""50: faults. Publishers at QoS 1 and 2 and persistent-session subscribers run through the
stack while one service at a time is SIGKILLed a few times (tests/fault/fault.py; Redis
too): no acknowledged message is lost for the subscribers, who reconnect once more at the
end to collect what was stored. Small in `make test` (about 10 s a service);
LATCHKEY_FAULT=large runs the large size (a minute of load and 8 kills a service)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "fault"))
import fault  # noqa: E402

SIZE = os.environ.get("LATCHKEY_FAULT", "small")
# the large size's runs take minutes: past the suite's per-test 120 s
TIMEOUT = 900 if SIZE == "large" else 120


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("svc", fault.SERVICES)
def test_kill_loses_no_acknowledged_message(stack, svc, capsys):
    stack.require("router", "session-store", "auth", "mqtt-frontend-1", "mqtt-frontend-2", svc)
    lines = []
    r = fault.run_one(stack, svc, SIZE, log=lines.append)
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert r["acked"] > 0, "nothing acknowledged: %s" % lines
    # the load went through the kills: most of what was sent got acknowledged
    assert r["acked"] >= 0.9 * r["sent"], lines
    assert r["lost"] == 0, "\n".join(lines)
    assert r["sessions_lost"] == 0, "\n".join(lines)
    # a copy the broker sends again (a re-sent batch after a restart) says so with DUP
    assert r["broker_dup_without_flag"] == 0, "\n".join(lines)


def test_stored_message_reaches_connected_subscriber_after_store_restart(stack):
    """A persistent subscriber stays connected while the session store restarts; a QoS 1
    message published right after the restart must reach it without a reconnect."""
    stack.require("router", "session-store", "auth", "mqtt-frontend-1", "mqtt-frontend-2")
    import lk
    with lk.paho_client(stack, "strand-sub", clean_session=False) as sub, \
            lk.paho_client(stack, "strand-pub") as pub:
        sub.subscribe("strand/t", 1)
        pub.publish("strand/t", "before", qos=1)
        assert sub.wait_for(1, timeout=5)[0].text == "before"
        stack.kill("session-store")
        pub.publish("strand/t", "after", qos=1, timeout=10)
        assert [m.text for m in sub.wait_for(1, timeout=5)] == ["after"]
    # tidy: the session goes, and with it what it kept
    lk.paho_client(stack, "strand-sub", clean_session=True).disconnect()


def _raw_session(stack, client_id, clean):
    """A raw MQTT 3.1.1 connection (socket) with CONNACK read; returns (socket, session
    present)."""
    import socket
    import struct
    cid = client_id.encode()
    body = (struct.pack("!H", 4) + b"MQTT" + bytes([4, 0x02 if clean else 0x00])
            + struct.pack("!H", 30) + struct.pack("!H", len(cid)) + cid)
    s = socket.create_connection(("127.0.0.1", stack.mqtt_port), timeout=5)
    s.sendall(b"\x10" + bytes([len(body)]) + body)
    ack = _read_packet(s)
    assert ack[0] == 0x20 and ack[2][1] == 0, ack
    return s, bool(ack[2][0] & 1)


def _read_packet(s):
    """(first byte, remaining length, body) of the next packet; socket.timeout if none."""
    def read(n):
        b = b""
        while len(b) < n:
            chunk = s.recv(n - len(b))
            if not chunk:
                raise ConnectionError("closed")
            b += chunk
        return b
    first = read(1)[0]
    mult, rl = 1, 0
    while True:
        d = read(1)[0]
        rl += (d & 0x7F) * mult
        mult *= 128
        if not d & 0x80:
            break
    return first, rl, read(rl)


def test_qos2_pubrel_resent_after_reconnect(stack):
    """Persistent QoS 2 subscriber: PUBLISH arrives, the client answers PUBREC and the
    connection drops before PUBREL. On reconnect (clean session 0) the server must re-send
    PUBREL with the same packet id (or the PUBLISH again)."""
    import struct
    import lk
    stack.require("router", "session-store", "auth", "mqtt-frontend-1", "mqtt-frontend-2")
    s, _ = _raw_session(stack, "q2-rel", clean=True)
    s.close()
    s, _ = _raw_session(stack, "q2-rel", clean=False)
    try:
        topic = b"q2/rel"
        s.sendall(b"\x82" + bytes([2 + 2 + len(topic) + 1]) + struct.pack("!H", 1)
                  + struct.pack("!H", len(topic)) + topic + b"\x02")
        assert _read_packet(s)[0] == 0x90
        lk.mosquitto_pub(stack, "q2/rel", "m1", qos=2)
        first, rl, body = _read_packet(s)
        assert first >> 4 == 3 and (first >> 1) & 3 == 2, (first, body)
        tl = struct.unpack("!H", body[:2])[0]
        pid = struct.unpack("!H", body[2 + tl:4 + tl])[0]
        s.sendall(b"\x50\x02" + struct.pack("!H", pid))      # PUBREC
        s.close()                                             # gone before PUBREL
        s, present = _raw_session(stack, "q2-rel", clean=False)
        assert present
        first, rl, body = _read_packet(s)
        if first >> 4 == 6:
            assert struct.unpack("!H", body[:2])[0] == pid     # PUBREL, same id
        else:
            assert first >> 4 == 3 and body[2 + tl:] .endswith(b"m1"), (first, body)
    finally:
        s.close()
        _raw_session(stack, "q2-rel", clean=True)[0].close()
