"""PROXY protocol (HAProxy's v1 text and v2 binary header) on stack.proxy_port.

A TCP load balancer in front of the frontends announces the real client's address in a
header before the client's bytes. Here raw sockets play the balancer: a header, then an
MQTT CONNECT. The address the frontend took is checked where it shows: a refused login is
logged by auth ("refused client ... from <address>") and by the frontend ("client ...
(<address>): refused"), both at notice level. With haproxy installed, a real haproxy
(send-proxy-v2) in front is tested too.
"""
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import uuid

import pytest

import lk
import mqttraw

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


@pytest.fixture(autouse=True)
def _needs(stack):
    stack.require("router", "auth", "session-store", "mqtt-frontend-1", "mqtt-frontend-2")


def v1(src, sport, dst=None, dport=1883):
    fam = "TCP6" if ":" in src else "TCP4"
    dst = dst or ("::1" if ":" in src else "127.0.0.1")
    return ("PROXY %s %s %s %d %d\r\n" % (fam, src, dst, sport, dport)).encode()


def v2(src, sport, dst="127.0.0.1", dport=1883, local=False, tlvs=b""):
    if ":" in src:
        fam, addrs = 0x21, socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(
            socket.AF_INET6, dst if ":" in dst else "::1")
    else:
        fam, addrs = 0x11, socket.inet_aton(src) + socket.inet_aton(dst)
    body = addrs + struct.pack("!HH", sport, dport) + tlvs
    return V2_SIG + bytes([0x20 if local else 0x21, fam]) + struct.pack("!H", len(body)) + body


def refused_login(stack, header, user):
    """header + CONNECT with a user that does not exist: CONNACK 5 (not authorized / bad
    credentials) comes back"""
    c = mqttraw.Conn(stack.proxy_port)
    try:
        c.send(header + mqttraw.connect("px-" + uuid.uuid4().hex[:6], username=user,
                                        password="wrong"))
        pkt = c.read_packet(timeout=5)
        assert pkt is not None and pkt[0] == 2 and pkt[2][1] in (4, 5), pkt
    finally:
        c.close()


def _logs(stack):
    return stack.log("auth") + "".join(stack.log(fe) for fe in ("mqtt-frontend-1",
                                                                  "mqtt-frontend-2"))


@pytest.mark.parametrize("kind,src,port", [("v1", "203.0.113.7", 51234),
                                           ("v1", "2001:db8::7", 4242),
                                           ("v2", "198.51.100.9", 12345),
                                           ("v2", "2001:db8::9", 6553)])
def test_proxied_address_is_the_clients(stack, kind, src, port):
    user = "px-%s" % uuid.uuid4().hex[:8]
    header = v1(src, port) if kind == "v1" else v2(src, port)
    refused_login(stack, header, user)
    want = "%s:%d" % (src, port)
    lk.wait_until(lambda: "username '%s' from %s" % (user, want) in stack.log("auth"), 10,
                  what="auth's refusal line naming %s" % want)
    # the frontend logs its refusal as it answers; s6-log may write it a moment later
    lk.wait_until(lambda: "(%s): refused" % want in _logs(stack), 10,
                  what="the frontend's refusal line naming %s" % want)


def test_data_right_after_header_and_pubsub(stack):
    """The header and the MQTT bytes in one write: exactly the header is taken. A proxied
    client publishes and subscribes as any other."""
    t = "proxy/%s" % uuid.uuid4().hex[:8]
    c = mqttraw.Conn(stack.proxy_port)
    try:
        c.send(v2("192.0.2.1", 1000, tlvs=b"\x04\x00\x02ab")  # with a NOOP TLV
               + mqttraw.connect("px-sub-" + uuid.uuid4().hex[:6]))
        assert c.read_packet()[0] == 2
        c.send(mqttraw.subscribe(1, [(t, 0)]))
        assert c.read_packet()[0] == 9
        lk.mosquitto_pub(stack, t, "via proxy port subscriber")
        pkt = c.read_packet()
        assert pkt[0] == 3 and pkt[2].endswith(b"via proxy port subscriber")
    finally:
        c.close()
    # v1 with the CONNECT split off in a second write, and v2 LOCAL (a health check)
    for header in (v1("192.0.2.2", 2000), v2("192.0.2.3", 3000, local=True)):
        c = mqttraw.Conn(stack.proxy_port)
        try:
            c.send(header[:5])
            time.sleep(0.05)
            c.send(header[5:])
            time.sleep(0.05)
            c.send(mqttraw.connect("px-" + uuid.uuid4().hex[:6]))
            pkt = c.read_packet()
            assert pkt[0] == 2 and pkt[2] == b"\x00\x00", pkt
        finally:
            c.close()


@pytest.mark.parametrize("garbage", [
    b"",  # plain MQTT: the CONNECT itself is no header
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # bare LF
    b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n",  # port out of range
    V2_SIG + b"\x31\x11\x00\x0c" + b"\x00" * 12,  # version 3
])
def test_missing_or_bad_header_closed(stack, garbage):
    c = mqttraw.Conn(stack.proxy_port)
    try:
        c.send(garbage + mqttraw.connect("px-bad-" + uuid.uuid4().hex[:6]))
        assert c.closed(timeout=5)
    finally:
        c.close()


def test_haproxy_in_front(stack, tmp_path):
    """A real haproxy (mode tcp, send-proxy-v2) in front of the PROXY listener: a client
    through it works, and the frontend names the client's own port, not haproxy's."""
    haproxy = shutil.which("haproxy") or (os.path.exists("/usr/sbin/haproxy") and "/usr/sbin/haproxy")
    if not haproxy:
        pytest.skip("haproxy not installed")
    port = lk.free_port({stack.mqtt_port, stack.proxy_port})
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text("""global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend mqtt
    bind 127.0.0.1:%d
    default_backend latchkey
backend latchkey
    server fe 127.0.0.1:%d send-proxy-v2
""" % (port, stack.proxy_port))
    proc = subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def up():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return True
            except OSError:
                return False
        lk.wait_until(up, 10, what="haproxy listening")
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        my_port = s.getsockname()[1]
        user = "hx-%s" % uuid.uuid4().hex[:8]
        try:
            s.sendall(mqttraw.connect("hx-" + uuid.uuid4().hex[:6], username=user,
                                      password="wrong"))
            data = s.recv(16)
            assert data[:1] == b"\x20", data
        finally:
            s.close()
        lk.wait_until(lambda: "username '%s' from 127.0.0.1:%d" % (user, my_port)
                      in stack.log("auth"), 10, what="auth naming the client's own port")
        # and a working client through haproxy
        t = "proxy/hx/%s" % uuid.uuid4().hex[:6]
        got = []
        sub = lk.mosquitto_sub_start(port, t, client_id="hx-sub-" + uuid.uuid4().hex[:6])
        try:
            def delivered():
                lk.mosquitto_pub(stack, t, "through haproxy", check=False)
                import select
                if select.select([sub.stdout], [], [], 0.2)[0]:
                    got.append(sub.stdout.readline())
                return got
            lk.wait_until(delivered, 10, interval=0.2, what="message through haproxy")
            assert "through haproxy" in got[0]
        finally:
            lk.stop_process(sub)
    finally:
        lk.stop_process(proc)
