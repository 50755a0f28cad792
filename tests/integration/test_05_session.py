"""05: sessions: persistent sessions queue QoS >= 1 while offline, clean sessions do not,
session present flag, takeover of a client id (on either frontend)."""
import uuid

import pytest

import lk


@pytest.fixture(autouse=True)
def _need(stack):
    stack.require("router", "session-store", "auth", "mqtt-frontend-1", "mqtt-frontend-2")


def test_persistent_session_gets_queued_messages(stack):
    c = lk.paho_client(stack, "ps-1", clean_session=False)
    assert c.subscribe("ps/1", 1) == [1]
    c.disconnect()
    for i in range(5):
        lk.mosquitto_pub(stack, "ps/1", "q%d" % i, qos=1)
    lk.mosquitto_pub(stack, "ps/1", "qos0-not-queued", qos=0)
    c = lk.paho_client(stack, "ps-1", clean_session=False)
    assert c.session_present
    msgs = c.wait_for(5)
    assert [m.text for m in msgs] == ["q%d" % i for i in range(5)]
    c.messages.expect_none(0.5)
    c.disconnect()
    # acked messages are gone: a reconnect brings nothing more
    c = lk.paho_client(stack, "ps-1", clean_session=False)
    c.messages.expect_none(0.7)
    c.disconnect()


def test_clean_session_discards_state(stack):
    c = lk.paho_client(stack, "cs-1", clean_session=False)
    c.subscribe("cs/1", 1)
    c.disconnect()
    lk.mosquitto_pub(stack, "cs/1", "lost", qos=1)
    c = lk.paho_client(stack, "cs-1", clean_session=True)
    assert not c.session_present
    c.messages.expect_none(0.5)
    c.disconnect()
    lk.mosquitto_pub(stack, "cs/1", "nobody", qos=1)
    c = lk.paho_client(stack, "cs-1", clean_session=False)
    assert not c.session_present
    c.messages.expect_none(0.5)
    c.disconnect()


def test_takeover_closes_old_connection(stack):
    # several tries so that both frontends (SO_REUSEPORT) are likely exercised
    for i in range(4):
        old = lk.paho_client(stack, "to-1", clean_session=False)
        old.subscribe("to/1", 1)
        new = lk.paho_client(stack, "to-1", clean_session=False)
        assert new.session_present
        old.wait_disconnected(5)
        lk.mosquitto_pub(stack, "to/1", "after-%d" % i, qos=1)
        assert new.wait_for(1)[0].text == "after-%d" % i
        old.messages.expect_none(0.2)
        new.disconnect()
        old.disconnect()


def test_zero_length_client_id(stack):
    # 3.1.1: allowed with clean session, refused (rc 2) without [MQTT-3.1.3-8]
    c = lk.paho_client(stack, "", clean_session=True)
    c.disconnect()
    import socket
    s = socket.create_connection(("127.0.0.1", stack.mqtt_port), timeout=5)
    # CONNECT 3.1.1, clean session 0, keepalive 60, empty client id
    s.sendall(bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 0, 0, 60, 0, 0]))
    assert s.recv(4) == bytes([0x20, 2, 0, 2])  # identifier rejected
    assert s.recv(1) == b""
    s.close()


@pytest.mark.parametrize("version", [4, 5])
def test_unacked_redelivered_on_reconnect_with_dup(stack, version):
    # a persistent subscriber takes QoS 1 and 2 messages without acking them, drops off,
    # and gets them again on reconnect, flagged DUP [MQTT-4.4.0-1], [MQTT-3.3.1-1]
    import struct
    import mqttraw as raw
    props = raw.props(bytes([0x11]) + struct.pack("!I", 300)) if version == 5 else b""
    cid = "redeliver-%d" % version
    c = raw.Conn(stack.mqtt_port)
    # 3.1.1: clean session 0 makes it persistent; 5: clean start with a session expiry
    c.send(raw.connect(cid, version=version, clean=version == 5, properties=props))
    assert c.read_packet()[0] == 2
    c.send(raw.subscribe(1, [("rd/%d" % version, 2)], version=version))
    assert c.read_packet()[0] == 9
    lk.mosquitto_pub(stack, "rd/%d" % version, "one", qos=1)
    lk.mosquitto_pub(stack, "rd/%d" % version, "two", qos=2)
    first = [c.read_packet(), c.read_packet()]
    assert all(p[0] == 3 and not p[1] & 8 for p in first)    # DUP 0 the first time
    c.close()                                                # no PUBACK, no PUBREC
    c = raw.Conn(stack.mqtt_port)
    c.send(raw.connect(cid, version=version, clean=False, properties=props))
    t, _, body = c.read_packet()
    assert t == 2 and body[0] & 1                            # session present
    again = [c.read_packet(), c.read_packet()]
    assert all(p[0] == 3 and p[1] & 8 for p in again), again  # DUP 1 now
    payloads = sorted(p[2][-3:] for p in again)
    assert payloads == [b"one", b"two"]
    c.close()
    c = raw.Conn(stack.mqtt_port)
    c.send(raw.connect(cid, version=version, clean=True))
    c.read_packet()
    c.close()


def test_redelivery_keeps_packet_ids(stack):
    # QoS 1 and 2 messages sent again on a later connection carry their original packet
    # identifiers [MQTT-4.4.0-1]: a client that PUBRECed one and still holds its id must
    # not see that id on a different message (it would take it for the same one)
    import struct
    import mqttraw as raw
    cid = "pids-" + uuid.uuid4().hex[:6]
    topic = "pid/" + cid

    def pid_and_payload(body):
        tlen = struct.unpack("!H", body[:2])[0]
        return struct.unpack("!H", body[2 + tlen:4 + tlen])[0], body[4 + tlen:]

    c = raw.Conn(stack.mqtt_port)
    c.send(raw.connect(cid, clean=False))
    assert c.read_packet()[0] == 2
    c.send(raw.subscribe(1, [(topic, 2)]))
    assert c.read_packet()[0] == 9
    for i in range(3):                      # completed: the next ids are not 1 again
        lk.mosquitto_pub(stack, topic, "done%d" % i, qos=1)
        t, _, body = c.read_packet()
        assert t == 3
        c.send(bytes([0x40, 2]) + body[2 + len(topic):4 + len(topic)])
    lk.mosquitto_pub(stack, topic, "one", qos=1)
    lk.mosquitto_pub(stack, topic, "two", qos=2)
    first = dict((p, pid) for pid, p in (pid_and_payload(c.read_packet()[2]) for _ in range(2)))
    c.close()                               # no PUBACK, no PUBREC
    c = raw.Conn(stack.mqtt_port)
    c.send(raw.connect(cid, clean=False))
    t, _, body = c.read_packet()
    assert t == 2 and body[0] & 1
    again = dict((p, pid) for pid, p in (pid_and_payload(c.read_packet()[2]) for _ in range(2)))
    assert again == first, (first, again)
    c.close()
    c = raw.Conn(stack.mqtt_port)
    c.send(raw.connect(cid, clean=True))
    c.read_packet()
    c.close()
