"""14: sessions and takeovers across the frontends (issue 12 items 4 and 6, issue 16
defect 8).

- Racing CONNECTs with one client id: exactly one connection survives, every round.
- QoS 2 exactly-once across a reconnect: the packet ids a client got PUBREC for are
  session state; a PUBLISH re-sent with DUP before PUBREL is not forwarded again, also
  when the frontend that answered PUBREC was SIGKILLed meanwhile.
- Races made deterministic: DISCONNECT with Session Expiry 0 then an immediate reconnect
  finds no session; a clean-start reconnect within the Will Delay publishes the old Will
  at once; a resume within it never does.
- Wills on takeover: dropped when the session is resumed, published when it ends.
- Degraded services: no router, CONNECT is refused with 0x88 / 3 within a bound and QoS 1
  publishes are not left hanging; no session store, clean sessions still connect and
  exchange messages, and are registered once it is back.

Raw sockets (tests/integration/mqttraw.py) where the timing matters, paho elsewhere.
"""
import re
import socket
import struct
import subprocess
import time

import pytest

import lk
import mqttraw as raw

FRONTENDS = ("mqtt-frontend-1", "mqtt-frontend-2")


@pytest.fixture(autouse=True)
def _need(stack):
    stack.require("router", "session-store", "auth", *FRONTENDS)


# ---- raw MQTT helpers -------------------------------------------------------------------------

def u32prop(ident, value):
    return bytes([ident]) + struct.pack("!I", value)


def connect5(client_id, clean=True, expiry=None, will=None, will_delay=None):
    """A 5.0 CONNECT with Session Expiry and a Will with Will Delay (as raw.connect lacks
    will properties)."""
    flags = 0x02 if clean else 0
    cprops = raw.props(u32prop(0x11, expiry)) if expiry is not None else raw.props()
    payload = raw.utf8(client_id)
    if will:
        flags |= 0x04 | (will.get("qos", 0) << 3)
        wprops = raw.props(u32prop(0x18, will_delay)) if will_delay is not None else raw.props()
        payload += wprops + raw.utf8(will["topic"]) + raw.utf8(will["payload"])
    vh = raw.utf8(b"MQTT") + bytes([5, flags]) + struct.pack("!H", 60) + cprops
    return raw.packet(0x10, vh + payload)


def disconnect5(expiry=None, reason=0):
    if expiry is None:
        return raw.packet(0xE0, bytes([reason]) + raw.props())
    return raw.packet(0xE0, bytes([reason]) + raw.props(u32prop(0x11, expiry)))


PINGREQ = b"\xc0\x00"


def pubrel(pid):
    return raw.packet(0x62, struct.pack("!H", pid))


def open_conn(stack, connect_bytes, timeout=10):
    """Connects and reads CONNACK: (conn, session_present, code)."""
    c = raw.Conn(stack.mqtt_port, timeout=timeout)
    c.send(connect_bytes)
    p = c.read_packet(timeout)
    assert p is not None and p[0] == 2, "no CONNACK: %r" % (p,)
    return c, bool(p[2][0] & 1), p[2][1]


def read_until(conn, ptype, timeout=5):
    """The body of the next packet of type ptype (others skipped); None when closed."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("no packet type %d within %.1fs" % (ptype, timeout))
        p = conn.read_packet(left)
        if p is None:
            return None
        if p[0] == ptype:
            return p[2]


def frontend_of_port(stack, local_port):
    """The s6 service name of the frontend holding our TCP connection from local_port."""
    out = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True,
                         text=True, timeout=10).stdout
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[2].endswith(":%d" % stack.mqtt_port) \
                and cols[3].endswith(":%d" % local_port) and "pid=" in line:
            pid = int(re.search(r"pid=(\d+)", line).group(1))
            for svc in FRONTENDS:
                if stack.svc_pid(svc) == pid:
                    return svc
    raise AssertionError("no frontend holds local port %d" % local_port)


def svc_down(stack, svc, timeout=20):
    subprocess.run(["s6-svc", "-d", stack.scan(svc)], check=True, timeout=10)
    subprocess.run(["s6-svwait", "-D", "-t", str(timeout * 1000), stack.scan(svc)],
                   check=True, timeout=timeout + 5)


def svc_up(stack, svc):
    subprocess.run(["s6-svc", "-u", stack.scan(svc)], check=True, timeout=10)
    stack.wait_up(svc)


# ---- item 4: racing CONNECTs ------------------------------------------------------------------

def _alive(conn, timeout=3, reasons=None):
    """True when the connection answers PINGREQ with PINGRESP. A DISCONNECT's reason code
    is appended to reasons."""
    try:
        conn.send(PINGREQ)
        deadline = time.monotonic() + timeout
        while True:
            p = conn.read_packet(max(0.01, deadline - time.monotonic()))
            if p is None:
                return False
            if p[0] == 14 and reasons is not None:
                reasons.append(p[2][0] if p[2] else 0)
            if p[0] == 13:
                return True
    except (OSError, socket.timeout):
        return False


def _race_round(stack, client_id, version, clean, n=10):
    conns = [raw.Conn(stack.mqtt_port, timeout=10) for _ in range(n)]
    if version == 5:
        pkt = connect5(client_id, clean=clean, expiry=None if clean else 300)
    else:
        pkt = raw.connect(client_id, version=4, clean=clean)
    for c in conns:
        c.send(pkt)
    accepted = []
    for c in conns:
        try:
            p = c.read_packet(10)
        except (socket.timeout, ConnectionResetError):
            p = None
        if p is not None:
            assert p[0] == 2, "first packet %r is not CONNACK" % (p,)
            assert p[2][1] == 0, "CONNACK refused (0x%02x)" % p[2][1]
            accepted.append(c)
    assert accepted, "no connection got CONNACK"
    # the dust settles: takeovers are answered within milliseconds; ping twice
    reasons = []
    time.sleep(0.3)
    alive = [c for c in accepted if _alive(c, reasons=reasons)]
    time.sleep(0.5)
    alive = [c for c in alive if _alive(c, reasons=reasons)]
    for c in conns:
        c.close()
    if version == 5:
        # the ones closed after CONNACK were told why: DISCONNECT 0x8E
        assert all(r == 0x8E for r in reasons), "DISCONNECT reasons %r" % reasons
    return len(accepted), len(alive)


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_racing_connects_leave_exactly_one(stack, version):
    rounds = 30
    results = []
    for r in range(rounds):
        acc, alive = _race_round(stack, "race-%d-%d" % (version, r), version, clean=r % 2 == 0)
        results.append((acc, alive))
    bad = [(i, a) for i, a in enumerate(results) if a[1] != 1]
    assert not bad, "rounds without exactly one survivor (accepted, alive): %r of %r" % (
        bad, results)


def test_takeover_v5_disconnect_reason(stack):
    """The connection taken over gets DISCONNECT 0x8E (Session taken over)."""
    a, _, rc = open_conn(stack, connect5("to-reason", clean=True))
    assert rc == 0
    b, _, rc = open_conn(stack, connect5("to-reason", clean=True))
    assert rc == 0
    body = read_until(a, 14, 10)
    assert body is not None and body[0] == 0x8E, "expected DISCONNECT 0x8E, got %r" % (body,)
    assert _alive(b)
    a.close()
    b.close()


# ---- item 6: QoS 2 exactly-once across a reconnect --------------------------------------------

def _q2_publisher(stack, client_id, version, avoid=None, tries=10):
    """A persistent-session publisher connection, on a frontend other than `avoid`."""
    for _ in range(tries):
        pkt = connect5(client_id, clean=False, expiry=300) if version == 5 else \
            raw.connect(client_id, version=4, clean=False)
        c, _present, rc = open_conn(stack, pkt)
        assert rc == 0
        fe = frontend_of_port(stack, c.s.getsockname()[1])
        if fe != avoid:
            return c, fe
        c.send(disconnect5() if version == 5 else b"\xe0\x00")
        c.close()
        time.sleep(0.05)
    raise AssertionError("publisher always landed on %s" % avoid)


@pytest.mark.parametrize("kill", [False, True], ids=["reconnect", "frontend-killed"])
@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_qos2_resend_before_pubrel_delivered_once(stack, version, kill):
    tag = "%d-%s" % (version, "k" if kill else "r")
    topic = "q2x/%s" % tag
    cid = "q2x-pub-%s" % tag
    sub = lk.paho_client(stack, "q2x-sub-%s" % tag)
    try:
        sub.subscribe(topic, 2)
        sub_fe = frontend_of_port(stack, sub.paho.socket().getsockname()[1])
        pub, pub_fe = _q2_publisher(stack, cid, version, avoid=sub_fe if kill else None)
        pub.send(raw.publish(topic, b"exactly-once", qos=2, pid=7, version=version))
        body = read_until(pub, 5, 10)
        assert body is not None and body[:2] == b"\x00\x07", "no PUBREC for pid 7"
        # the connection is lost before PUBREL
        pub.s.shutdown(socket.SHUT_RDWR)
        pub.close()
        if kill:
            stack.kill(pub_fe)
        pkt = connect5(cid, clean=False, expiry=300) if version == 5 else \
            raw.connect(cid, version=4, clean=False)
        pub, present, rc = open_conn(stack, pkt)
        assert rc == 0 and present, "session not resumed"
        # [MQTT-4.3.3-10]: re-sent with DUP, it must not be forwarded again
        pub.send(raw.publish(topic, b"exactly-once", qos=2, pid=7, dup=True, version=version))
        body = read_until(pub, 5, 10)
        assert body is not None and body[:2] == b"\x00\x07", "no PUBREC for the re-sent PUBLISH"
        pub.send(pubrel(7))
        body = read_until(pub, 7, 10)
        assert body is not None and body[:2] == b"\x00\x07", "no PUBCOMP"
        if version == 5 and len(body) > 2:
            assert body[2] == 0, "PUBCOMP reason 0x%02x: the id was not session state" % body[2]
        # the id is free again: a new message under it is forwarded
        pub.send(raw.publish(topic, b"next", qos=2, pid=7, version=version))
        assert read_until(pub, 5, 10)[:2] == b"\x00\x07"
        pub.send(pubrel(7))
        assert read_until(pub, 7, 10) is not None
        got = sub.messages.wait_for(2, timeout=10) + sub.messages.drain(quiet=1.0)
        payloads = [m.payload for m in got]
        assert payloads.count(b"exactly-once") == 1 and payloads.count(b"next") == 1, payloads
    finally:
        sub.disconnect()


# ---- item 6 races -----------------------------------------------------------------------------

def test_disconnect_expiry_zero_then_reconnect_finds_no_session(stack):
    """DISCONNECT with Session Expiry 0 ends the session; an immediate reconnect (to
    whichever frontend) never finds it [MQTT-3.1.2-23 / 3.14.2.2.2]. 20 rounds."""
    present_rounds = []
    for r in range(20):
        cid = "sx0-%d" % r
        c, _, rc = open_conn(stack, connect5(cid, clean=True, expiry=300))
        assert rc == 0
        c.send(raw.subscribe(1, [("sx0/%d" % r, 1)], version=5))
        assert read_until(c, 9, 10) is not None
        c.send(disconnect5(expiry=0))
        c.close()
        c2, present, rc = open_conn(stack, connect5(cid, clean=False, expiry=300))
        assert rc == 0
        if present:
            present_rounds.append(r)
        c2.send(disconnect5(expiry=0))
        c2.close()
    assert not present_rounds, "session survived in rounds %r" % present_rounds


def _will_watch(stack, name, topic):
    w = lk.paho_client(stack, name)
    w.subscribe(topic, 1)
    return w


def test_clean_start_within_will_delay_publishes_will_at_once(stack):
    """A clean start ends the old session: its delayed Will is published at once
    (MQTT 5 3.1.3.2.2 "or the Session ends", as Mosquitto does). 20 rounds, each one
    Will, long before the 30 s delay."""
    w = _will_watch(stack, "wd-watch", "wd/+")
    try:
        counts = []
        for r in range(20):
            cid = "wd-%d" % r
            c, _, rc = open_conn(stack, connect5(cid, clean=True, expiry=60, will=dict(
                topic="wd/%d" % r, payload="gone", qos=1), will_delay=30))
            assert rc == 0
            c.s.shutdown(socket.SHUT_RDWR)   # lost, no DISCONNECT
            c.close()
            c2, present, rc = open_conn(stack, connect5(cid, clean=True, expiry=0))
            assert rc == 0 and not present
            t0 = time.monotonic()
            got = []
            while time.monotonic() - t0 < 5 and not got:
                got = [m for m in w.messages.drain(quiet=0.2, timeout=0.5)
                       if m.topic == "wd/%d" % r]
            counts.append(len(got))
            c2.send(disconnect5())
            c2.close()
        extra = w.messages.drain(quiet=0.5)
        assert counts == [1] * 20, "wills per round: %r" % counts
        assert not extra, "late wills: %r" % extra
    finally:
        w.disconnect()


def test_resume_within_will_delay_never_publishes_will(stack):
    """A reconnect that resumes the session within the Will Delay withholds the Will
    [MQTT-3.1.3-9]. 20 clients, checked past their 2 s delay."""
    w = _will_watch(stack, "wr-watch", "wr/+")
    keep = []
    try:
        for r in range(20):
            cid = "wr-%d" % r
            c, _, rc = open_conn(stack, connect5(cid, clean=True, expiry=60, will=dict(
                topic="wr/%d" % r, payload="gone", qos=1), will_delay=2))
            assert rc == 0
            c.s.shutdown(socket.SHUT_RDWR)
            c.close()
            c2, present, rc = open_conn(stack, connect5(cid, clean=False, expiry=60))
            assert rc == 0 and present
            keep.append(c2)
        time.sleep(3.0)
        got = w.messages.drain(quiet=0.5)
        assert not got, "wills published although the sessions were resumed: %r" % got
    finally:
        for c in keep:
            c.send(disconnect5(expiry=0))
            c.close()
        w.disconnect()


@pytest.mark.parametrize("case,expect_will", [
    ("resume", False),          # clean start 0, old expiry > 0: the session goes on
    ("clean-start", True),      # clean start 1: the session ends
    ("old-expiry-0", True),     # the old connection's session ended with it
])
def test_takeover_will(stack, case, expect_will):
    """5.0 takeover, Will Delay 0 [MQTT-3.1.2-8]: the old connection's Will is published
    only when the session does not go on (Mosquitto's rule)."""
    topic = "tw/%s" % case
    w = _will_watch(stack, "tw-watch-" + case, topic)
    try:
        cid = "tw-" + case
        old_expiry = 0 if case == "old-expiry-0" else 300
        a, _, rc = open_conn(stack, connect5(cid, clean=True, expiry=old_expiry, will=dict(
            topic=topic, payload="will", qos=1), will_delay=0))
        assert rc == 0
        b, present, rc = open_conn(stack, connect5(cid, clean=case == "clean-start",
                                                   expiry=300))
        assert rc == 0
        assert present == (case == "resume")
        body = read_until(a, 14, 10)
        assert body is not None and body[0] == 0x8E
        got = w.messages.drain(quiet=1.0, timeout=5)
        assert len(got) == (1 if expect_will else 0), got
        b.send(disconnect5(expiry=0))
        b.close()
        a.close()
    finally:
        w.disconnect()


# ---- issue 16 defect 8: no router, no session store --------------------------------------------

def test_no_router_connect_refused_and_publish_not_hanging(stack):
    bound = 12.0        # request_timeout_ms (5 s) + failure detection (1 s) + cron, with margin
    pub_bound = 45.0    # router_timeout_ms (30 s) + the same
    c5, _, rc = open_conn(stack, connect5("nr-open", clean=True))
    assert rc == 0
    svc_down(stack, "router")
    try:
        t_down = time.monotonic()
        # an open connection's QoS 1 publish: no PUBACK can come
        c5.send(raw.publish("nr/t", b"x", qos=1, pid=3, version=5))
        for version, code in ((4, 3), (5, 0x88)):
            t0 = time.monotonic()
            pkt = connect5("nr-%d" % version) if version == 5 else raw.connect("nr-4")
            c = raw.Conn(stack.mqtt_port, timeout=bound + 5)
            c.send(pkt)
            p = c.read_packet(bound + 5)
            took = time.monotonic() - t0
            assert p is not None and p[0] == 2 and p[2][1] == code, \
                "v%d: expected CONNACK %d, got %r" % (version, code, p)
            assert took < bound, "CONNACK after %.1fs" % took
            c.close()
        # ... and the publisher is told, within router_timeout_ms, rather than left hanging
        body = read_until(c5, 14, pub_bound)
        assert body is not None and body[0] == 0x88, "expected DISCONNECT 0x88, got %r" % (body,)
        took = time.monotonic() - t_down
        assert 25 < took < pub_bound, "DISCONNECT after %.1fs" % took
    finally:
        c5.close()
        svc_up(stack, "router")
    # back: clients connect and publish
    with lk.paho_client(stack, "nr-after") as c:
        c.subscribe("nr/after", 1)
        c.publish("nr/after", "ok", qos=1)
        assert c.messages.get(timeout=10).text == "ok"


def test_no_session_store_clean_sessions_work(stack):
    svc_down(stack, "session-store")
    survivors = []
    try:
        t0 = time.monotonic()
        sub = lk.paho_client(stack, "nss-sub", timeout=10)
        assert time.monotonic() - t0 < 8
        pub = lk.paho_client(stack, "nss-pub", timeout=10)
        sub.subscribe("nss/t", 1)
        pub.publish("nss/t", "q0", qos=0)
        pub.publish("nss/t", "q1", qos=1)
        got = sorted(m.text for m in sub.wait_for(2, timeout=10))
        assert got == ["q0", "q1"]
        # a persistent session needs the store: refused within request_timeout_ms
        c = raw.Conn(stack.mqtt_port, timeout=15)
        c.send(raw.connect("nss-persist", clean=False))
        p = c.read_packet(15)
        assert p is not None and p[0] == 2 and p[2][1] == 3, p
        c.close()
        # the same clean client id twice while the store is down: kept until it is back
        twins = [open_conn(stack, raw.connect("nss-twin"))[0] for _ in range(4)]
        survivors = twins
        pub.disconnect()
        sub.disconnect()
    finally:
        svc_up(stack, "session-store")
    # reconciled: the store registers them again; one holder of the id remains
    lk.wait_until(lambda: sum(_alive(c, 1) for c in survivors) == 1, 15, interval=0.5,
                  what="one nss-twin left")
    for c in survivors:
        c.close()
    with lk.paho_client(stack, "nss-after", clean_session=False) as c:
        c.subscribe("nss/after", 1)
        c.publish("nss/after", "ok", qos=1)
        assert c.messages.get(timeout=10).text == "ok"
