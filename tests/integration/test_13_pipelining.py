"""13: packets a client sends before CONNACK, and how connections end (issue 12).

A client may send packets right behind its CONNECT, without waiting for CONNACK (3.1.4:
"Clients need not wait for a CONNACK"); a server that refuses the CONNECT must not handle
them [MQTT-3.1.4-5] (5.0: [MQTT-3.1.4-6]). The frontend reads nothing past a CONNECT until it is accepted, then handles what
came behind it in order; a refused CONNECT drops them. Tried the ways real networks
deliver them: all in the CONNECT's write, byte by byte, in a second write right after, for
MQTT 3.1, 3.1.1 and 5.0, over TCP, TLS, WebSocket and PROXY; and with real clients
(paho-mqtt's connect/subscribe/loop_start, mosquitto_sub -c -C 1 twice).

Also here: acks coalesced with DISCONNECT reach the session store before the session
closes; the Will after an invalid MQTT 5 DISCONNECT; no PUBREL after PUBREC >= 0x80; a
CONNACK within the client's Maximum Packet Size; UNSUBACK 0x8F; and the drain after a
server-side DISCONNECT (the client still writing reads it, no reset)."""
import os
import socket
import ssl
import struct
import threading
import time
import uuid

import paho.mqtt.client as paho
import pytest

import lk
import mqttraw as raw


@pytest.fixture(autouse=True)
def _need(stack):
    stack.require("router", "session-store", "auth", "mqtt-frontend-1", "mqtt-frontend-2")


# ---- packets -----------------------------------------------------------------------------
PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"


def pubrel(pid):
    return raw.packet(0x62, struct.pack("!H", pid))


def puback(pid):
    return raw.packet(0x40, struct.pack("!H", pid))


def unsubscribe(pid, filters, version):
    body = struct.pack("!H", pid) + (raw.props() if version == 5 else b"")
    for f in filters:
        body += raw.utf8(f)
    return raw.packet(0xA2, body)


def uid(prefix):
    # 3.1 allows 23 characters
    return (prefix + uuid.uuid4().hex)[:23]


# ---- transports --------------------------------------------------------------------------
class WSSock:
    """A socket look-alike speaking MQTT inside WebSocket binary frames (client side:
    masked), so that mqttraw.Conn works over it unchanged."""

    def __init__(self, sock, port):
        self.sock = sock
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        sock.sendall(("GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                      "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
                      % (port, key)).encode())
        self.raw = b""
        while b"\r\n\r\n" not in self.raw:
            chunk = sock.recv(4096)
            assert chunk, "no WebSocket upgrade answer"
            self.raw += chunk
        head, _, self.raw = self.raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def settimeout(self, t):
        self.sock.settimeout(t)

    def setsockopt(self, *a):
        self.sock.setsockopt(*a)

    def sendall(self, data):
        key = os.urandom(4)
        n = len(data)
        hdr = bytes([0x82, 0x80 | n]) if n < 126 else bytes([0x82, 0x80 | 126]) + struct.pack("!H", n)
        self.sock.sendall(hdr + key + bytes(b ^ key[i % 4] for i, b in enumerate(data)))

    def recv(self, n):
        while True:
            if len(self.raw) >= 2:
                b0, b1 = self.raw[0], self.raw[1]
                ln, off = b1 & 0x7f, 2
                if ln == 126:
                    ln, off = (struct.unpack("!H", self.raw[2:4])[0], 4) if len(self.raw) >= 4 else (None, 0)
                elif ln == 127:
                    ln, off = (struct.unpack("!Q", self.raw[2:10])[0], 10) if len(self.raw) >= 10 else (None, 0)
                if ln is not None and len(self.raw) >= off + ln:
                    payload = self.raw[off:off + ln]
                    self.raw = self.raw[off + ln:]
                    op = b0 & 0x0f
                    if op == 0x8:
                        return b""
                    if op in (0x0, 0x2) and payload:
                        return payload
                    continue
            chunk = self.sock.recv(65536)
            if not chunk:
                return b""
            self.raw += chunk

    def close(self):
        self.sock.close()


class Conn(raw.Conn):
    """mqttraw.Conn over one of the stack's transports: tcp, tls, ws, proxy."""

    def __init__(self, stack, transport="tcp", timeout=10):
        self.buf = b""
        port = {"tcp": stack.mqtt_port, "tls": stack.tls_port, "ws": stack.ws_port,
                "proxy": stack.proxy_port}[transport]
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if transport == "tls":
            ctx = ssl.create_default_context(cafile=os.path.join(stack.tls_dir, "ca.crt"))
            s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
        elif transport == "ws":
            s = WSSock(s, port)
        elif transport == "proxy":
            s.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 1884\r\n")
        self.s = s

    def closed(self, timeout=5):
        try:
            return super().closed(timeout)
        except (ssl.SSLError, OSError):
            return True

    def read_until(self, want, timeout=10):
        """Packets until every (type, first body bytes) in want was seen; returns them all."""
        got, deadline = [], time.monotonic() + timeout
        left = list(want)
        while left:
            p = self.read_packet(max(0.1, deadline - time.monotonic()))
            assert p is not None, "closed; got %r, still waiting for %r" % (got, left)
            got.append(p)
            for i, (t, prefix) in enumerate(left):
                if p[0] == t and p[2][:len(prefix)] == prefix:
                    del left[i]
                    break
        return got


def send_as(conn, data, mode, first_len):
    """mode: 'one' (a single write), 'bytes' (one byte a write), 'two' (the CONNECT, then
    the rest right after)"""
    if mode == "one":
        conn.send(data)
    elif mode == "two":
        conn.send(data[:first_len])
        conn.send(data[first_len:])
    else:
        for i in range(len(data)):
            conn.send(data[i:i + 1])


# ---- every packet type behind CONNECT ----------------------------------------------------
@pytest.mark.parametrize("transport", ["tcp", "tls", "ws", "proxy"])
@pytest.mark.parametrize("version", [3, 4, 5])
@pytest.mark.parametrize("mode", ["one", "bytes", "two"])
def test_packets_behind_connect(stack, transport, version, mode):
    # SUBSCRIBE, PUBLISH QoS 0/1/2, PINGREQ behind CONNECT: CONNACK first [MQTT-3.1.4-4]
    # (5.0: 3.1.4-5), then each answered and the messages delivered
    cid = uid("pl%s%d%s" % (transport[0], version, mode[0]))
    t = "pipe/%s" % cid
    v = version
    conn_pkt = raw.connect(cid, version=v)
    rest = (raw.subscribe(1, [(t, 2)], version=v)
            + raw.publish(t, b"m0", qos=0, version=v)
            + raw.publish(t, b"m1", qos=1, pid=2, version=v)
            + raw.publish(t, b"m2", qos=2, pid=3, version=v)
            + PINGREQ)
    c = Conn(stack, transport)
    try:
        send_as(c, conn_pkt + rest, mode, len(conn_pkt))
        first = c.read_packet(10)
        assert first is not None and first[0] == 2, first
        assert first[2][1] == 0, "CONNACK code %r" % first[2]
        pid = lambda n: struct.pack("!H", n)
        got = c.read_until([(9, pid(1)), (4, pid(2)), (5, pid(3)), (13, b""),
                            (3, b""), (3, b""), (3, b"")])
        c.send(pubrel(3))
        c.read_until([(7, pid(3))])
        payloads = sorted(p[2][-2:] for p in got if p[0] == 3)
        assert payloads == [b"m0", b"m1", b"m2"], got
        # the other kinds, behind a CONNECT of their own: UNSUBSCRIBE, PINGREQ, DISCONNECT.
        # The DISCONNECT is a normal one: the Will in that CONNECT must not be published
        # (c, still subscribed to t, would get it). The UNSUBACK may not come: the client
        # left before the router acked the UNSUBSCRIBE.
        c2 = Conn(stack, transport)
        try:
            conn_pkt = raw.connect(cid[:-1] + "u", version=v, will={"topic": t, "payload": b"will"})
            send_as(c2, conn_pkt + unsubscribe(4, [t], v) + PINGREQ + DISCONNECT, mode,
                    len(conn_pkt))
            first = c2.read_packet(10)
            assert first is not None and first[0] == 2 and first[2][1] == 0, first
            got = c2.read_until([(13, b"")])
            assert c2.closed(), "DISCONNECT behind CONNECT did not close"
        finally:
            c2.close()
        c.s.settimeout(0.5)
        try:
            p = c.read_packet(0.5)
        except socket.timeout:
            p = None
        assert p is None, "will published after a normal DISCONNECT: %r" % (p,)
        c.send(DISCONNECT)
        assert c.closed()
    finally:
        c.close()


@pytest.mark.parametrize("version", [4, 5])
def test_refused_connect_drops_pipelined_packets(stack, version):
    # a refused CONNECT: CONNACK refusal, close, and nothing behind it is handled
    t = "pipe/refused/%s" % uuid.uuid4().hex[:8]
    c = Conn(stack, "tcp")
    try:
        c.send(raw.connect("pl-ref-%d" % version, version=version, username="nosuchuser",
                           password="x")
               + raw.publish(t, b"must not be kept", qos=1, pid=1, retain=True, version=version)
               + PINGREQ)
        p = c.read_packet(10)
        assert p is not None and p[0] == 2 and p[2][1] != 0, p
        assert c.closed()
    finally:
        c.close()
    got = lk.mosquitto_sub(stack, t, count=1, timeout=1)
    assert got == [], "a packet behind a refused CONNECT was handled: %r" % got


def test_second_connect_behind_connect_is_protocol_error(stack):
    # [MQTT-3.1.0-2] still a protocol violation when it comes in the same write
    c = Conn(stack, "tcp")
    try:
        c.send(raw.connect("pl-2nd", version=5) + raw.connect("pl-2nd", version=5))
        p = c.read_packet(10)
        assert p[0] == 2 and p[2][1] == 0, p
        p = c.read_packet(10)
        assert p is not None and p[0] == 14 and p[2][0] == 0x82, p
        assert c.closed()
    finally:
        c.close()


def test_connect_and_close_at_once_still_handled(stack):
    # CONNECT + PUBLISH + DISCONNECT, then the client closes its socket before CONNACK:
    # the publish is still handled (a retained message we can read back)
    t = "pipe/fire/%s" % uuid.uuid4().hex[:8]
    s = socket.create_connection(("127.0.0.1", stack.mqtt_port), timeout=10)
    s.sendall(raw.connect("pl-fire") + raw.publish(t, b"kept", qos=1, pid=1, retain=True)
              + DISCONNECT)
    s.shutdown(socket.SHUT_WR)
    try:
        data = b""
        s.settimeout(10)
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        assert data[:1] == b"\x20", data
    finally:
        s.close()
    got = lk.mosquitto_sub(stack, t, count=1, timeout=5)
    assert got == ["kept"], got
    lk.mosquitto_pub(stack, t, None, retain=True)


# ---- real clients ----------------------------------------------------------------------------
def test_paho_connect_subscribe_loop_start(stack):
    # paho-mqtt used the usual way: connect(); subscribe(); loop_start() — the SUBSCRIBE
    # leaves before CONNACK arrived. Every round must get its message.
    for i in range(20):
        t = "pipe/paho/%d/%s" % (i, uuid.uuid4().hex[:6])
        got = threading.Event()
        subacked = threading.Event()
        c = paho.Client(client_id="pl-paho-%d" % i, clean_session=True)
        c.on_message = lambda cl, ud, m: got.set()
        c.on_subscribe = lambda *a: subacked.set()
        c.connect("127.0.0.1", stack.mqtt_port, 30)
        c.subscribe(t, 1)
        c.loop_start()
        try:
            assert subacked.wait(10), "round %d: no SUBACK" % i
            lk.mosquitto_pub(stack, t, "hello", qos=1)
            assert got.wait(10), "round %d: message not received" % i
            assert c.is_connected()
        finally:
            c.disconnect()
            c.loop_stop()


def test_mosquitto_sub_persistent_twice_prints_once(stack):
    # issue 12 item 2: PUBACK and DISCONNECT leave mosquitto_sub in one write; the ack
    # must reach the session store before the session closes
    cid = "pl-msub-" + uuid.uuid4().hex[:8]
    t = "pipe/msub/" + cid
    assert lk.mosquitto_sub(stack, t, count=1, timeout=1, qos=1, client_id=cid, clean=False) == []
    lk.mosquitto_pub(stack, t, "once", qos=1)
    first = lk.mosquitto_sub(stack, t, count=1, timeout=5, qos=1, client_id=cid, clean=False)
    assert first == ["once"], first
    for _ in range(2):
        again = lk.mosquitto_sub(stack, t, count=1, timeout=2, qos=1, client_id=cid, clean=False)
        assert again == [], "an acknowledged message came back: %r" % again


def _persistent_sub(stack, cid, t, version=4):
    c = Conn(stack, "tcp")
    props = raw.props(b"\x11" + struct.pack("!I", 3600)) if version == 5 else b""
    c.send(raw.connect(cid, version=version, clean=False, properties=props))
    p = c.read_packet(10)
    assert p[0] == 2 and p[2][1] == 0, p
    return c


@pytest.mark.parametrize("version", [4, 5])
def test_puback_disconnect_coalesced(stack, version):
    # PUBACK + DISCONNECT in one write: the stored copy is gone at the next connect
    cid = "pl-ackd-%d-%s" % (version, uuid.uuid4().hex[:6])
    t = "pipe/ackd/" + cid
    c = _persistent_sub(stack, cid, t, version)
    c.send(raw.subscribe(1, [(t, 1)], version=version))
    assert c.read_packet(10)[0] == 9
    lk.mosquitto_pub(stack, t, "x", qos=1)
    p = c.read_packet(10)
    assert p[0] == 3 and p[1] & 0x06 == 2, p
    tl = struct.unpack("!H", p[2][:2])[0]
    pid = struct.unpack("!H", p[2][2 + tl:4 + tl])[0]
    c.send(puback(pid) + DISCONNECT)
    assert c.closed()
    c.close()
    # on the bus: the session store received the ack before the SessionClose
    def order():
        import glob
        import json
        import subprocess
        files = sorted(glob.glob(os.path.join(stack.run_dir, "msglog", "session-store-*.lkm")))
        out = subprocess.run([os.path.join(lk.build_dir(), "bin", "latchkey"), "log", "dump"]
                             + files, capture_output=True, text=True, timeout=20).stdout
        kinds = []
        for line in out.splitlines():
            env = json.loads(line)["envelope"]
            for k in ("session_ack", "session_close"):
                if k in env and env[k].get("client") == cid and \
                        (k == "session_close" or env[k].get("store_ids")):
                    kinds.append(k)
        return kinds if "session_close" in kinds else None
    kinds = lk.wait_until(order, 10, what="the SessionClose in the session store's log")
    assert kinds.index("session_ack") < kinds.index("session_close"), kinds
    for _ in range(3):
        c = _persistent_sub(stack, cid, t, version)
        try:
            nothing = c.read_packet(1.0)
        except socket.timeout:
            nothing = None
        assert nothing is None, "acknowledged message delivered again: %r" % (nothing,)
        c.send(DISCONNECT)
        c.close()


# ---- MQTT 5 details ----------------------------------------------------------------------
def test_will_after_invalid_disconnect(stack):
    # [MQTT-3.14.2-2] Session Expiry on DISCONNECT when CONNECT had 0: DISCONNECT 0x82, and
    # the close is a protocol error, so the Will is published [MQTT-3.1.2-8]
    t = "pipe/will/" + uuid.uuid4().hex[:8]
    sub = Conn(stack, "tcp")
    sub.send(raw.connect(uid("plws"), version=5) + raw.subscribe(1, [(t, 0)], version=5))
    assert sub.read_packet(10)[0] == 2
    assert sub.read_packet(10)[0] == 9
    c = Conn(stack, "tcp")
    try:
        c.send(raw.connect(uid("plw"), version=5, will={"topic": t, "payload": b"gone"}))
        assert c.read_packet(10)[0] == 2
        c.send(raw.packet(0xE0, b"\x00" + raw.props(b"\x11" + struct.pack("!I", 60))))
        p = c.read_packet(10)
        assert p is not None and p[0] == 14 and p[2][0] == 0x82, p
        assert c.closed()
        w = sub.read_packet(10)
        assert w is not None and w[0] == 3 and w[2].endswith(b"gone"), w
    finally:
        c.close()
        sub.close()


def test_no_pubrel_after_failed_pubrec(stack):
    # MQTT 5 4.3.3: a PUBREC with a reason >= 0x80 ends the exchange: no PUBREL, the packet
    # id is free again
    t = "pipe/rec/" + uuid.uuid4().hex[:8]
    c = Conn(stack, "tcp")
    try:
        c.send(raw.connect(uid("plrec"), version=5) + raw.subscribe(1, [(t, 2)], version=5))
        assert c.read_packet(10)[0] == 2
        assert c.read_packet(10)[0] == 9
        lk.mosquitto_pub(stack, t, "a", qos=2)
        p = c.read_packet(10)
        assert p[0] == 3 and (p[1] >> 1) & 3 == 2, p
        pid = struct.unpack("!H", p[2][2 + len(t):4 + len(t)])[0]
        c.send(raw.packet(0x50, struct.pack("!H", pid) + b"\x80"))
        c.send(PINGREQ)
        p = c.read_packet(5)
        assert p[0] == 13, "expected PINGRESP, not PUBREL: %r" % (p,)
        # the id is free and the flow goes on
        lk.mosquitto_pub(stack, t, "b", qos=2)
        p = c.read_packet(10)
        assert p[0] == 3 and p[2].endswith(b"b"), p
    finally:
        c.close()


def test_connack_within_client_maximum_packet_size(stack):
    # [MQTT-3.1.2-24] CONNACK with an assigned client id and our limits would be ~60
    # bytes; the client allows 20: properties are left out until it fits
    c = Conn(stack, "tcp")
    try:
        c.send(raw.connect("", version=5, properties=raw.props(b"\x27" + struct.pack("!I", 20))))
        c.s.settimeout(10)
        data = b""
        while len(data) < 2 or len(data) < 2 + data[1]:
            chunk = c.s.recv(4096)
            assert chunk, "closed without CONNACK"
            data += chunk
        assert data[0] == 0x20, data
        assert len(data) <= 20, "CONNACK of %d bytes" % len(data)
        assert data[3] == 0, data
    finally:
        c.close()


def test_unsubscribe_invalid_filter_0x8f(stack):
    # MQTT 5 3.11.3: an invalid Topic Filter is 0x8F in UNSUBACK, not 0x11
    c = Conn(stack, "tcp")
    try:
        c.send(raw.connect(uid("plun"), version=5) + unsubscribe(7, ["a/#/b", "ok/x"], 5))
        assert c.read_packet(10)[0] == 2
        p = c.read_packet(10)
        assert p[0] == 11, p
        codes = p[2][3:]   # pid, empty properties
        assert codes == b"\x8f\x11", codes
    finally:
        c.close()


# ---- the drain after a server-side DISCONNECT ----------------------------------------------------
def test_client_still_writing_reads_disconnect(stack):
    # Paho's test_flow_control2: the client exceeds Receive Maximum and goes on publishing;
    # it must read DISCONNECT 0x93 rather than a reset
    t = "pipe/flow/" + uuid.uuid4().hex[:8]
    c = Conn(stack, "tcp")
    try:
        c.send(raw.connect(uid("plflow"), version=5))
        p = c.read_packet(10)
        assert p[0] == 2 and p[2][1] == 0, p
        # receive_maximum is 100 in the test stack (CONNACK says so when lower)
        burst = b"".join(raw.publish(t, b"x" * 100, qos=1, pid=i, version=5)
                         for i in range(1, 400))
        c.send(burst)
        # the server has sent DISCONNECT and ended the connection by now; the client,
        # not reading yet, goes on writing for a while: no EPIPE / reset
        time.sleep(0.5)
        for i in range(5):
            try:
                c.s.sendall(raw.publish(t, b"y" * 100, qos=1, pid=500 + i, version=5))
            except OSError as e:
                raise AssertionError("write %d after the server's DISCONNECT failed: %s" % (i, e))
            time.sleep(0.05)
        got = []
        try:
            while True:
                p = c.read_packet(5)
                if p is None or p[0] == 14:
                    break
                got.append(p[0])
        except ConnectionResetError as e:
            raise AssertionError("reset before reading DISCONNECT: %s" % e)
        assert p is not None and p[0] == 14 and p[2][0] == 0x93, (p, got)
    finally:
        c.close()


# ---- why a client was cut off, rate-limited ------------------------------------------------
def test_refused_connect_flood_log_is_bounded(stack):
    # 60 refused logins (through the PROXY listener, from an address of their own so the
    # login back-off does not slow other tests): the frontends log at most 10 lines each
    # and a count of the rest; auth likewise
    import random
    src = "198.18.%d.%d" % (random.randint(0, 255), random.randint(1, 254))
    before_fe = sum(stack.log(s).count("refused CONNECT: ") for s in ("mqtt-frontend-1",
                                                                    "mqtt-frontend-2"))
    before_au = stack.log("auth").count("refused client")
    t0 = time.monotonic()
    for i in range(60):
        s = socket.create_connection(("127.0.0.1", stack.proxy_port), timeout=10)
        try:
            s.sendall(("PROXY TCP4 %s 127.0.0.1 %d 1884\r\n" % (src, 20000 + i)).encode()
                      + raw.connect("pl-flood-%d" % i, username="nosuch", password="x"))
            s.recv(16)
        finally:
            s.close()
    secs = time.monotonic() - t0
    lk.wait_until(lambda: any("more refused CONNECT line(s) not logged" in stack.log(s)
                              for s in ("mqtt-frontend-1", "mqtt-frontend-2")), 15,
                  what="the count of refused CONNECT lines not logged")
    fe = sum(stack.log(s).count("refused CONNECT: ") for s in ("mqtt-frontend-1",
                                                               "mqtt-frontend-2")) - before_fe
    au = stack.log("auth").count("refused client") - before_au
    bound = 2 * (10 + int(secs) + 2)
    assert fe <= bound, "%d refused CONNECT lines for 60 refusals in %.1fs" % (fe, secs)
    assert au <= 10 + int(secs) + 2, "%d auth refusal lines in %.1fs" % (au, secs)
    assert fe >= 1
