"""02: byte-level conformance. Each case sends exact bytes and checks the exact answer
(or disconnect) the specification requires, tagged with its requirement id. Both
protocol levels where they differ: 3.1.1 closes the connection, 5.0 sends DISCONNECT or
CONNACK with a reason code first."""
import struct

import pytest

import mqttraw as raw


@pytest.fixture(autouse=True)
def _need(stack):
    stack.require("router", "session-store", "auth", "mqtt-frontend-1", "mqtt-frontend-2")


def connected(stack, cid, version=4, **kw):
    c = raw.Conn(stack.mqtt_port)
    c.send(raw.connect(cid, version=version, **kw))
    t, _, body = c.read_packet()
    assert t == 2 and body[1] == 0, body
    return c


def expect_disconnect(c, version, reason):
    """3.1.1: the connection is closed; 5: DISCONNECT(reason) then closed."""
    if version == 5:
        p = c.read_packet()
        assert p is not None and p[0] == 14, p
        assert p[2][0] == reason, "reason 0x%02x, expected 0x%02x" % (p[2][0], reason)
    assert c.closed()


# --- CONNECT ---------------------------------------------------------------------------

def test_first_packet_must_be_connect(stack):
    # [MQTT-3.1.0-1] anything else first: the connection is closed
    c = raw.Conn(stack.mqtt_port)
    c.send(raw.subscribe(1, [("a", 0)]))
    assert c.closed()


@pytest.mark.parametrize("version", [4, 5])
def test_second_connect_is_protocol_violation(stack, version):
    # [MQTT-3.1.0-2]
    c = connected(stack, "conf-2nd-%d" % version, version)
    c.send(raw.connect("conf-2nd-%d" % version, version=version))
    expect_disconnect(c, version, 0x82)


def test_unsupported_protocol_level_311(stack):
    # [MQTT-3.1.2-2] level 6 answered with CONNACK 0x01 and closed
    c = raw.Conn(stack.mqtt_port)
    body = raw.utf8("MQTT") + bytes([6, 2, 0, 60]) + raw.utf8("conf-lvl")
    c.send(raw.packet(0x10, body))
    assert c.read_packet() == (2, 0, bytes([0, 1]))
    assert c.closed()


def test_wrong_protocol_name(stack):
    # [MQTT-3.1.2-1] a name other than MQTT (MQIsdp for 3.1) is refused
    c = raw.Conn(stack.mqtt_port)
    body = raw.utf8("hj") + bytes([4, 2, 0, 60]) + raw.utf8("conf-name")
    c.send(raw.packet(0x10, body))
    p = c.read_packet()
    assert p is None or (p[0] == 2 and p[2][1] != 0)
    assert c.closed()


def test_connect_reserved_flag(stack):
    # [MQTT-3.1.2-3] reserved flag bit 0 set: malformed, closed
    c = raw.Conn(stack.mqtt_port)
    body = raw.utf8("MQTT") + bytes([4, 3, 0, 60]) + raw.utf8("conf-res")
    c.send(raw.packet(0x10, body))
    assert c.closed()


def test_mqtt31_connect(stack):
    # MQTT 3.1: protocol name MQIsdp, level 3
    c = raw.Conn(stack.mqtt_port)
    c.send(raw.connect("conf-31", version=3))
    assert c.read_packet() == (2, 0, bytes([0, 0]))
    c.send(raw.subscribe(1, [("conf/31", 1)]))
    assert c.read_packet() == (9, 0, struct.pack("!H", 1) + bytes([1]))
    c.send(raw.publish("conf/31", b"hello", qos=1, pid=7))
    got = [c.read_packet(), c.read_packet()]
    types = sorted(p[0] for p in got)
    assert types == [3, 4]      # our own PUBLISH back, and PUBACK for ours
    c.close()


def test_mqtt31_client_id_longer_than_23(stack):
    # 3.1: identifiers of 1..23 characters; longer refused with 0x02
    c = raw.Conn(stack.mqtt_port)
    c.send(raw.connect("x" * 24, version=3))
    assert c.read_packet() == (2, 0, bytes([0, 2]))
    assert c.closed()


@pytest.mark.parametrize("version", [4, 5])
def test_bad_utf8_client_id(stack, version):
    # [MQTT-1.5.3-1] ill-formed UTF-8 is a malformed packet
    c = raw.Conn(stack.mqtt_port)
    c.send(raw.connect(b"bad\xc3\x28", version=version))
    p = c.read_packet()
    if version == 5:
        assert p is not None and p[0] == 2 and p[2][1] == 0x81
    assert c.closed()


def test_v5_auth_method_without_support(stack):
    # no enhanced authentication configured: CONNACK 0x8C (bad authentication method)
    c = raw.Conn(stack.mqtt_port)
    c.send(raw.connect("conf-auth", version=5, properties=raw.props(bytes([0x15]) + raw.utf8("SCRAM"))))
    t, _, body = c.read_packet()
    assert t == 2 and body[1] == 0x8C
    assert c.closed()


# --- fixed header and remaining length ------------------------------------------------

@pytest.mark.parametrize("version", [4, 5])
def test_bad_remaining_length(stack, version):
    # [MQTT-1.5.5-1] more than 4 bytes of remaining length is malformed
    c = connected(stack, "conf-rl-%d" % version, version)
    c.send(bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]))
    expect_disconnect(c, version, 0x81)


@pytest.mark.parametrize("version", [4, 5])
def test_reserved_bits_in_subscribe(stack, version):
    # [MQTT-3.8.1-1] SUBSCRIBE flags must be 0010
    c = connected(stack, "conf-rb-%d" % version, version)
    body = struct.pack("!H", 1) + (raw.props() if version == 5 else b"") + raw.utf8("a") + bytes([0])
    c.send(raw.packet(0x80, body))
    expect_disconnect(c, version, 0x81)


@pytest.mark.parametrize("version", [4, 5])
def test_publish_qos3_is_malformed(stack, version):
    # [MQTT-3.3.1-4]
    c = connected(stack, "conf-q3-%d" % version, version)
    body = raw.utf8("a") + struct.pack("!H", 1) + (raw.props() if version == 5 else b"") + b"x"
    c.send(raw.packet(0x36, body))
    expect_disconnect(c, version, 0x81)


@pytest.mark.parametrize("version", [4, 5])
def test_publish_wildcard_topic(stack, version):
    # [MQTT-3.3.2-2] no wildcards in a PUBLISH topic name
    c = connected(stack, "conf-wc-%d" % version, version)
    c.send(raw.publish("a/+/b", b"x", version=version))
    expect_disconnect(c, version, 0x90 if version == 5 else 0x81)


@pytest.mark.parametrize("version", [4, 5])
def test_publish_packet_id_zero(stack, version):
    # [MQTT-2.2.1-3] QoS > 0 needs a non-zero packet identifier
    c = connected(stack, "conf-pid0-%d" % version, version)
    c.send(raw.publish("a", b"x", qos=1, pid=0, version=version))
    expect_disconnect(c, version, 0x82)


@pytest.mark.parametrize("version", [4, 5])
def test_publish_bad_utf8_topic(stack, version):
    # [MQTT-1.5.3-1]
    c = connected(stack, "conf-utf-%d" % version, version)
    c.send(raw.packet(0x30, struct.pack("!H", 3) + b"a\xff\xfe" + (raw.props() if version == 5 else b"") + b"x"))
    expect_disconnect(c, version, 0x81)


@pytest.mark.parametrize("version", [4, 5])
def test_subscribe_without_filters(stack, version):
    # [MQTT-3.8.3-3] at least one filter
    c = connected(stack, "conf-sub0-%d" % version, version)
    c.send(raw.packet(0x82, struct.pack("!H", 1) + (raw.props() if version == 5 else b"")))
    expect_disconnect(c, version, 0x82)


@pytest.mark.parametrize("version", [4, 5])
def test_subscribe_invalid_filter_refused_per_entry(stack, version):
    # [MQTT-4.7.1-2] '#' not last: that entry is refused, the others granted
    c = connected(stack, "conf-subf-%d" % version, version)
    c.send(raw.subscribe(5, [("a/#/b", 0), ("ok/+", 1)], version=version))
    t, _, body = c.read_packet()
    assert t == 9 and body[:2] == struct.pack("!H", 5)
    codes = body[2:] if version == 4 else body[3:]
    assert codes == bytes([0x80 if version == 4 else 0x8F, 1])
    c.close()


def test_subscribe_qos_reserved_bits_311(stack):
    # [MQTT-3-8.3-4] upper bits of the requested QoS byte must be 0
    c = connected(stack, "conf-subq", 4)
    c.send(raw.subscribe(1, [("a", 0x04)]))
    assert c.closed()


@pytest.mark.parametrize("version", [4, 5])
def test_unsubscribe_reply(stack, version):
    # [MQTT-3.10.4-4] UNSUBACK with the same packet id (5: a code per filter)
    c = connected(stack, "conf-unsub-%d" % version, version)
    c.send(raw.subscribe(3, [("u/1", 0)], version=version))
    assert c.read_packet()[0] == 9
    body = struct.pack("!H", 9) + (raw.props() if version == 5 else b"") + raw.utf8("u/1") + raw.utf8("u/none")
    c.send(raw.packet(0xA2, body))
    t, _, b = c.read_packet()
    assert t == 11 and b[:2] == struct.pack("!H", 9)
    if version == 5:
        assert b[3:] == bytes([0x00, 0x11])
    else:
        assert len(b) == 2
    c.close()


@pytest.mark.parametrize("version", [4, 5])
def test_qos2_duplicate_not_forwarded_twice(stack, version):
    # [MQTT-4.3.3-10] a re-sent QoS 2 PUBLISH (DUP) before PUBREL is not delivered again
    sub = connected(stack, "conf-q2s-%d" % version, version)
    sub.send(raw.subscribe(1, [("q2/%d" % version, 0)], version=version))
    assert sub.read_packet()[0] == 9
    pub = connected(stack, "conf-q2p-%d" % version, version)
    pub.send(raw.publish("q2/%d" % version, b"once", qos=2, pid=11, version=version))
    assert pub.read_packet()[0] == 5
    pub.send(raw.publish("q2/%d" % version, b"once", qos=2, pid=11, dup=True, version=version))
    assert pub.read_packet()[0] == 5
    pub.send(raw.packet(0x62, struct.pack("!H", 11)))
    assert pub.read_packet()[0] == 7
    assert sub.read_packet()[0] == 3
    with pytest.raises(Exception):
        sub.read_packet(timeout=0.7)
    pub.close()
    sub.close()


def test_pingreq(stack):
    # [MQTT-3.12.4-1]
    c = connected(stack, "conf-ping", 4)
    c.send(bytes([0xC0, 0]))
    assert c.read_packet() == (13, 0, b"")
    c.close()


def test_oversize_packet_refused_before_body(stack):
    # max_packet_size: a 300 MB remaining length is refused from its header alone
    c = connected(stack, "conf-big", 5)
    c.send(bytes([0x30]) + raw.varint(268435455))
    t, _, body = c.read_packet()
    assert t == 14 and body[0] == 0x95
    assert c.closed()


# --- packets before CONNACK (3.1.4: "Clients need not wait for a CONNACK") -------------------
# Each packet type right behind the CONNECT in the same write: CONNACK 0 comes first
# [MQTT-3.1.4-4] (5.0: [MQTT-3.1.4-5]), then the packet is handled as on an open session.
# Refused: nothing behind the CONNECT is handled [MQTT-3.1.4-5] (5.0: [MQTT-3.1.4-6]).
# The other transports (TLS, WebSocket, PROXY) and byte-by-byte delivery: test_13.

def _pipelined(version, cid, t, kind):
    pid = struct.pack("!H", 7)
    if kind == "subscribe":
        return raw.subscribe(7, [(t, 1)], version=version), [(9, pid)]
    if kind == "publish0":
        return (raw.subscribe(6, [(t, 0)], version=version)
                + raw.publish(t, b"p0", version=version)), [(9, b""), (3, b"")]
    if kind == "publish1":
        return raw.publish(t, b"p1", qos=1, pid=7, version=version), [(4, pid)]
    if kind == "publish2":
        return raw.publish(t, b"p2", qos=2, pid=7, version=version), [(5, pid)]
    if kind == "pingreq":
        return bytes([0xC0, 0]), [(13, b"")]
    if kind == "unsubscribe":
        body = pid + (raw.props() if version == 5 else b"") + raw.utf8(t)
        return raw.packet(0xA2, body), [(11, pid)]
    raise ValueError(kind)


@pytest.mark.parametrize("version", [3, 4, 5])
@pytest.mark.parametrize("kind", ["subscribe", "publish0", "publish1", "publish2", "pingreq",
                                  "unsubscribe"])
def test_packet_behind_connect_handled_after_connack(stack, version, kind):
    cid = "cf-pl-%s-%d" % (kind[:4] + kind[-1], version)
    t = "conf/pipe/" + cid
    extra, want = _pipelined(version, cid, t, kind)
    c = raw.Conn(stack.mqtt_port)
    c.send(raw.connect(cid, version=version) + extra)
    first = c.read_packet()
    assert first is not None and first[0] == 2 and first[2][1] == 0, first
    # the answers in any order (a message may overtake its SUBACK)
    left = list(want)
    while left:
        p = c.read_packet()
        assert p is not None, "closed instead of answering %s" % kind
        match = [w for w in left if p[0] == w[0] and p[2][:len(w[1])] == w[1]]
        assert match, (kind, p, left)
        left.remove(match[0])
    c.send(bytes([0xE0, 0]))
    assert c.closed()


@pytest.mark.parametrize("version", [3, 4, 5])
def test_disconnect_behind_connect(stack, version):
    # CONNECT + DISCONNECT in one write: CONNACK, then a normal close (no Will)
    c = raw.Conn(stack.mqtt_port)
    c.send(raw.connect("cf-pl-disc-%d" % version, version=version) + bytes([0xE0, 0]))
    p = c.read_packet()
    assert p is not None and p[0] == 2 and p[2][1] == 0, p
    assert c.closed()


@pytest.mark.parametrize("version", [4, 5])
def test_packets_behind_refused_connect_not_handled(stack, version):
    # [MQTT-3.1.4-5] / 5.0 [MQTT-3.1.4-6]: a retained PUBLISH behind a refused CONNECT
    # leaves no retained message
    t = "conf/pipe/refused/%d" % version
    c = raw.Conn(stack.mqtt_port)
    c.send(raw.connect("cf-pl-ref-%d" % version, version=version, username="no-such-user",
                       password="x")
           + raw.publish(t, b"never", qos=0, retain=True, version=version))
    p = c.read_packet()
    assert p is not None and p[0] == 2 and p[2][1] != 0, p
    assert c.closed()
    s = connected(stack, "cf-pl-ref-chk-%d" % version, 4)
    s.send(raw.subscribe(1, [(t, 0)]))
    assert s.read_packet()[0] == 9
    s.s.settimeout(1.0)
    try:
        p = s.read_packet(1.0)
    except Exception:
        p = None
    assert p is None, "retained message from behind a refused CONNECT: %r" % (p,)
    s.close()
