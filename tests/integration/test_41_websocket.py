"""MQTT over WebSocket (RFC 6455, subprotocol mqtt) and WebSocket over TLS.

The stack's listeners stack.ws_port (ws://) and stack.wss_port (wss://, the test CA's server
certificate in stack.tls_dir). Clients: MQTT.js 5 in Node (tests/interop/mqttjs, ws and
wss with the CA verified), MQTT.js's browser bundle in headless Chromium (served from a
local HTTP server on 127.0.0.1; the page reports back to that server), and a byte-level
WebSocket client here for framing: fragmented and masked frames, ping/pong, the close
handshake and protocol violations.

Chromium over wss:// runs with --ignore-certificate-errors (the test CA is not in its
store; Node's run above verifies the chain against the CA).
"""
import base64
import hashlib
import http.server
import os
import queue
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import urllib.parse
import uuid

import pytest

import time

import lk
import mqttraw

MQTTJS = os.path.join(lk.ROOT, "tests", "interop", "mqttjs")
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@pytest.fixture(autouse=True)
def _needs(stack):
    stack.require("router", "auth", "session-store", "mqtt-frontend-1", "mqtt-frontend-2")


def _npm_ready():
    if os.path.isdir(os.path.join(MQTTJS, "node_modules", "mqtt")):
        return
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=MQTTJS, check=True,
                   capture_output=True, timeout=300)


# ---- MQTT.js in Node -------------------------------------------------------------------
@pytest.mark.parametrize("version", ["4", "5"])
def test_mqttjs_ws(stack, version):
    _npm_ready()
    p = subprocess.run(["node", "roundtrip.js", "ws://127.0.0.1:%d/mqtt" % stack.ws_port, version],
                       cwd=MQTTJS, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr + p.stdout


@pytest.mark.parametrize("version", ["4", "5"])
def test_mqttjs_wss(stack, version):
    _npm_ready()
    ca = os.path.join(stack.tls_dir, "ca.crt")
    p = subprocess.run(["node", "roundtrip.js", "wss://127.0.0.1:%d/mqtt" % stack.wss_port,
                        version, ca], cwd=MQTTJS, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr + p.stdout


# ---- a byte-level WebSocket client --------------------------------------------------------
class WS:
    def __init__(self, port, protocol="mqtt", path="/mqtt", extra_headers="", timeout=5):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.key = base64.b64encode(os.urandom(16)).decode()
        req = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
               % (path, port, self.key))
        if protocol:
            req += "Sec-WebSocket-Protocol: %s\r\n" % protocol
        self.s.sendall((req + extra_headers + "\r\n").encode())
        self.status, self.headers = self._read_head()

    def _read_head(self):
        while b"\r\n\r\n" not in self.buf:
            chunk = self.s.recv(4096)
            if not chunk:
                break
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return lines[0], headers

    def accept_ok(self):
        want = base64.b64encode(hashlib.sha1((self.key + GUID).encode()).digest()).decode()
        return self.headers.get("sec-websocket-accept") == want

    @staticmethod
    def frame(opcode, payload, fin=True, mask=True, rsv=0):
        b0 = (0x80 if fin else 0) | rsv | opcode
        n = len(payload)
        m = 0x80 if mask else 0
        if n < 126:
            hdr = bytes([b0, m | n])
        elif n < 65536:
            hdr = bytes([b0, m | 126]) + struct.pack("!H", n)
        else:
            hdr = bytes([b0, m | 127]) + struct.pack("!Q", n)
        if not mask:
            return hdr + payload
        key = os.urandom(4)
        return hdr + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))

    def send(self, data):
        self.s.sendall(data)

    def read_frame(self, timeout=5):
        """(fin, opcode, payload) of the next server frame, or None at EOF. Server frames
        must not be masked."""
        self.s.settimeout(timeout)
        while True:
            if len(self.buf) >= 2:
                b0, b1 = self.buf[0], self.buf[1]
                assert not b1 & 0x80, "server frame is masked"
                n, off = b1 & 0x7f, 2
                if n == 126 and len(self.buf) >= 4:
                    n, off = struct.unpack("!H", self.buf[2:4])[0], 4
                elif n == 127 and len(self.buf) >= 10:
                    n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
                if (b1 & 0x7f) < 126 or off > 2:
                    if len(self.buf) >= off + n:
                        payload = self.buf[off:off + n]
                        self.buf = self.buf[off + n:]
                        return bool(b0 & 0x80), b0 & 0x0f, payload
            try:
                chunk = self.s.recv(65536)
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            self.buf += chunk

    def mqtt_packets(self, n, timeout=5):
        """the next n MQTT packets from binary frames (a packet may span frames)"""
        stream, pkts, others = b"", [], []
        while len(pkts) < n:
            f = self.read_frame(timeout)
            assert f is not None, "closed before %d packets (got %r)" % (n, pkts)
            fin, op, payload = f
            if op in (0x0, 0x2):
                stream += payload
            else:
                others.append(f)
                continue
            while len(stream) >= 2:
                mult, rl, i = 1, 0, 1
                while True:
                    b = stream[i]
                    rl += (b & 127) * mult
                    mult *= 128
                    i += 1
                    if not b & 128:
                        break
                if len(stream) < i + rl:
                    break
                pkts.append((stream[0] >> 4, stream[i:i + rl]))
                stream = stream[i + rl:]
        return pkts, others

    def closed(self, timeout=5):
        """reads until EOF; returns the close frames seen"""
        closes = []
        try:
            while True:
                f = self.read_frame(timeout)
                if f is None:
                    return closes
                if f[1] == 0x8:
                    closes.append(f[2])
        except socket.timeout:
            raise AssertionError("connection not closed within %ss" % timeout)

    def close(self):
        self.s.close()


def test_upgrade_answer(stack):
    w = WS(stack.ws_port, protocol="mqttv3.1, mqtt")
    try:
        assert w.status.startswith("HTTP/1.1 101"), w.status
        assert w.accept_ok(), w.headers
        assert w.headers.get("sec-websocket-protocol") == "mqtt"
        assert w.headers.get("upgrade", "").lower() == "websocket"
    finally:
        w.close()


def test_not_an_upgrade_refused(stack):
    s = socket.create_connection(("127.0.0.1", stack.ws_port), timeout=5)
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = s.recv(4096)
        assert data.startswith(b"HTTP/1.1 400"), data
        assert s.recv(4096) == b""
    finally:
        s.close()
    # a WebSocket client that offers only another subprotocol
    w = WS(stack.ws_port, protocol="chat")
    try:
        assert w.status.startswith("HTTP/1.1 400"), w.status
    finally:
        w.close()


def test_fragmented_masked_frames_ping_and_packing(stack):
    """CONNECT split over three fragments with a ping between them; then SUBSCRIBE and
    PINGREQ packed in one frame; a PUBLISH split in the middle of its header."""
    w = WS(stack.ws_port)
    try:
        cid = "ws-frag-" + uuid.uuid4().hex[:6]
        c = mqttraw.connect(cid)
        w.send(WS.frame(0x2, c[:3], fin=False) + WS.frame(0x9, b"are you there")
               + WS.frame(0x0, c[3:10], fin=False) + WS.frame(0x0, b"", fin=False)
               + WS.frame(0x0, c[10:], fin=True))
        pkts, others = w.mqtt_packets(1)
        assert pkts[0][0] == 2 and pkts[0][1] == b"\x00\x00", pkts  # CONNACK accepted
        if not others:
            f = w.read_frame()
            others.append(f)
        assert (True, 0xA, b"are you there") in others, others  # PONG, same payload
        t = "ws/frag/" + uuid.uuid4().hex[:6]
        w.send(WS.frame(0x2, mqttraw.subscribe(1, [(t, 0)]) + b"\xc0\x00"))
        pkts, _ = w.mqtt_packets(2)
        # SUBACK (after the router's ack) and PINGRESP, in either order
        assert sorted(p[0] for p in pkts) == [9, 13], pkts
        big = os.urandom(70000)  # a 64-bit frame length
        pub = mqttraw.publish(t, big)
        w.send(WS.frame(0x2, pub[:2], fin=False) + WS.frame(0x0, pub[2:], fin=True))
        pkts, _ = w.mqtt_packets(1, timeout=10)
        assert pkts[0][0] == 3 and pkts[0][1].endswith(big)
        # the client closes: the server answers with a close frame and closes TCP
        w.send(WS.frame(0x8, struct.pack("!H", 1000) + b"bye"))
        closes = w.closed()
        assert closes and struct.unpack("!H", closes[0][:2])[0] == 1000, closes
    finally:
        w.close()


@pytest.mark.parametrize("case,code", [("text", 1003), ("unmasked", 1002), ("rsv", 1002),
                                       ("continuation", 1002), ("long-ping", 1002)])
def test_protocol_violations_closed(stack, case, code):
    w = WS(stack.ws_port)
    try:
        c = mqttraw.connect("ws-bad-" + uuid.uuid4().hex[:6])
        bad = {"text": WS.frame(0x1, c), "unmasked": WS.frame(0x2, c, mask=False),
               "rsv": WS.frame(0x2, c, rsv=0x40), "continuation": WS.frame(0x0, c),
               "long-ping": WS.frame(0x9, b"x" * 126)}[case]
        w.send(bad)
        closes = w.closed()
        assert closes and struct.unpack("!H", closes[0][:2])[0] == code, closes
    finally:
        w.close()
    # the frontend is fine
    assert lk.mosquitto_pub(stack, "ws/after", "x").returncode == 0


def test_tcp_to_ws_and_back(stack):
    """What a TCP client publishes reaches a WebSocket subscriber and the reverse (QoS 1)."""
    t = "ws/x/" + uuid.uuid4().hex[:6]
    w = WS(stack.ws_port)
    try:
        w.send(WS.frame(0x2, mqttraw.connect("ws-x-" + uuid.uuid4().hex[:6])))
        assert w.mqtt_packets(1)[0][0][0] == 2
        w.send(WS.frame(0x2, mqttraw.subscribe(1, [(t + "/in", 1)])))
        assert w.mqtt_packets(1)[0][0][0] == 9
        lk.mosquitto_pub(stack, t + "/in", "from tcp", qos=1)
        pkts, _ = w.mqtt_packets(1)
        assert pkts[0][0] == 3 and pkts[0][1].endswith(b"from tcp")
        with lk.paho_client(stack, "tcp-x-" + uuid.uuid4().hex[:6]) as p:
            p.subscribe(t + "/out", qos=1)
            w.send(WS.frame(0x2, mqttraw.publish(t + "/out", b"from ws", qos=1, pid=7)))
            assert p.messages.get(timeout=5).payload == b"from ws"
    finally:
        w.close()


# ---- MQTT.js in headless Chromium ----------------------------------------------------
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>latchkey ws test</title>
<script src="mqtt.min.js"></script></head>
<body><div id="payload">waiting</div>
<script>
const q = new URLSearchParams(location.search);
const report = (what, v) => fetch('/' + what + '?v=' + encodeURIComponent(v));
try {
  const c = mqtt.connect(q.get('url'), { protocolVersion: 4, reconnectPeriod: 0,
      connectTimeout: 5000, clientId: 'browser-' + Math.random().toString(16).slice(2, 10) });
  c.on('error', (e) => report('error', e.message));
  c.on('connect', () => c.subscribe(q.get('topic'), { qos: 1 }, (err, granted) => {
    if (err || granted[0].qos !== 1) report('error', 'subscribe: ' + (err || granted[0].qos));
    else report('ready', '1');
  }));
  c.on('message', (t, p) => {
    document.getElementById('payload').textContent = p.toString();
    report('result', p.toString());
  });
} catch (e) { report('error', String(e)); }
</script></body></html>
"""


class _Site:
    """A local HTTP server on 127.0.0.1 serving the page and MQTT.js's browser bundle; the
    page's reports (/ready, /result, /error?v=...) land in self.reports."""

    def __init__(self):
        bundle = os.path.join(MQTTJS, "node_modules", "mqtt", "dist", "mqtt.min.js")
        with open(bundle, "rb") as f:
            files = {"/index.html": (PAGE.encode(), "text/html"),
                     "/mqtt.min.js": (f.read(), "application/javascript")}
        reports = self.reports = queue.Queue()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                u = urllib.parse.urlparse(self.path)
                if u.path in files:
                    body, ctype = files[u.path]
                else:
                    v = urllib.parse.parse_qs(u.query).get("v", [""])[0]
                    reports.put((u.path.strip("/"), v))
                    body, ctype = b"ok", "text/plain"
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, what, timeout):
        """the value of the next `what` report; AssertionError on an error report or none"""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                kind, v = self.reports.get(timeout=max(0.0, left))
            except queue.Empty:
                raise AssertionError("the page sent no %r within %ss" % (what, timeout))
            if kind == "error":
                raise AssertionError("the page reported an error: %s" % v)
            if kind == what:
                return v

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_browser_mqttjs(stack, scheme):
    """MQTT.js's browser bundle in headless Chromium subscribes over ws(s)://…/mqtt and
    shows what mosquitto_pub publishes over TCP."""
    browser = _chromium()
    if not browser:
        pytest.skip("no Chromium (supervise/install-deps installs it)")
    _npm_ready()
    port = stack.ws_port if scheme == "ws" else stack.wss_port
    t = "browser/%s/%s" % (scheme, uuid.uuid4().hex[:8])
    site = _Site()
    profile = tempfile.mkdtemp(prefix="lk-chromium-")
    url = "http://127.0.0.1:%d/index.html?%s" % (site.port, urllib.parse.urlencode(
        {"url": "%s://127.0.0.1:%d/mqtt" % (scheme, port), "topic": t}))
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", "--user-data-dir=" + profile, "--remote-debugging-port=0"]
    if scheme == "wss":
        args.append("--ignore-certificate-errors")  # the test CA is not in Chromium's store
    proc = subprocess.Popen(args + [url], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        site.wait("ready", 30)
        payload = "hello browser %s" % uuid.uuid4().hex[:6]
        lk.mosquitto_pub(stack, t, payload, qos=1)
        assert site.wait("result", 10) == payload
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        site.close()
        shutil.rmtree(profile, ignore_errors=True)
