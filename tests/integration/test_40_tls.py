"""08-tls: MQTT over TLS, mutual TLS, use_identity_as_username, CRL, SIGHUP reload.

The stack's extra listeners (supervise/latchkey.conf): stack.tls_port (TLS, server
certificate only) and stack.mtls_port (a client certificate from the test CA required, CRL
checked, the certificate's CN is the username). The certificates are made at start by
supervise/make-certs in stack.tls_dir: ca.crt, server.crt/key (127.0.0.1, localhost),
alice.crt/key (CN=alice), crl.pem. Tests that need more make them with the same script:
another CA for the refusal cases, bob's certificate to revoke, a new server certificate
for the reload. Real clients only: mosquitto_sub/mosquitto_pub (--cafile, --cert, --key)
and openssl s_client.
"""
import os
import re
import subprocess
import time
import uuid

import pytest

import lk

MAKE_CERTS = os.path.join(lk.ROOT, "supervise", "make-certs")
FRONTENDS = ("mqtt-frontend-1", "mqtt-frontend-2")


@pytest.fixture(autouse=True)
def _needs(stack):
    stack.require("router", "auth", "session-store", *FRONTENDS)


def tls(stack, *names):
    return [os.path.join(stack.tls_dir, n) for n in names]


def ca_args(stack):
    return ["--cafile", tls(stack, "ca.crt")[0]]


def cert_args(stack, name):
    crt, key = tls(stack, name + ".crt", name + ".key")
    return ["--cafile", tls(stack, "ca.crt")[0], "--cert", crt, "--key", key]


def make_certs(*args):
    subprocess.run([MAKE_CERTS] + [str(a) for a in args], check=True, timeout=60,
                   capture_output=True)


def topic(name):
    return "tls/%s/%s" % (name, uuid.uuid4().hex[:8])


def roundtrip(stack, sub_port, sub_extra, t, payload, pub_port=None, pub_extra=(), user=None,
              password=None, timeout=8):
    """mosquitto_sub on sub_port (extra args) waits for one message that mosquitto_pub
    sends to pub_port (default: the plain MQTT port); returns (payloads, sub stderr)."""
    args = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(sub_port), "-t", t, "-C", "1",
            "-W", str(timeout), "-i", "sub-" + uuid.uuid4().hex[:8]] + list(sub_extra)
    if user:
        args += ["-u", user]
    if password:
        args += ["-P", password]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL)
    try:
        # publish until the subscriber has its subscription (bounded: timeout seconds)
        deadline = time.monotonic() + timeout
        while p.poll() is None and time.monotonic() < deadline:
            lk.mosquitto_pub(pub_port or stack.mqtt_port, t, payload, extra=pub_extra,
                             check=False, timeout=5)
            try:
                out, err = p.communicate(timeout=0.3)
                return out.splitlines(), err
            except subprocess.TimeoutExpired:
                pass
        out, err = lk.stop_process(p)
        return out.splitlines(), err
    finally:
        if p.poll() is None:
            lk.stop_process(p)


def test_tls_subscribe_and_publish(stack):
    """A TLS client verifying the server against the test CA gets what a TCP client
    publishes, and what it publishes over TLS reaches a TCP subscriber."""
    t = topic("a")
    got, err = roundtrip(stack, stack.tls_port, ca_args(stack), t, "over tls")
    assert got == ["over tls"], err
    t = topic("b")
    got, err = roundtrip(stack, stack.mqtt_port, [], t, "from tls", pub_port=stack.tls_port,
                         pub_extra=ca_args(stack))
    assert got == ["from tls"], err


def test_tls_server_not_trusted_with_another_ca(stack, tmp_path):
    """The client that does not trust our CA refuses the server (the certificate chain is
    checked for real)."""
    make_certs(tmp_path / "other", "ca", "ca", "/CN=Other CA")
    got = lk.mosquitto_sub(stack.tls_port, topic("x"), timeout=3,
                           extra=["--cafile", str(tmp_path / "other" / "ca.crt")])
    assert got == []


def test_plain_mqtt_on_tls_port_refused(stack):
    """An MQTT CONNECT in clear on the TLS port is no TLS handshake: closed, no CONNACK."""
    import mqttraw
    c = mqttraw.Conn(stack.tls_port)
    try:
        c.send(mqttraw.connect("plain-on-tls"))
        try:
            pkt = c.read_packet(timeout=5)
        except ConnectionResetError:
            pkt = None
        # whatever comes back is a TLS alert, not a CONNACK (type 2, body 0x00 0x00)
        assert pkt is None or pkt[0] != 2
        assert c.closed(timeout=5)
    finally:
        c.close()


def test_mtls_client_certificate_accepted(stack):
    """[08-tls] mosquitto_sub --cafile --cert --key connects to the mutual-TLS listener."""
    stack.redis_cli("HSET", "mqtt_acl:alice", "tls/#", "3")
    try:
        t = topic("m")
        got, err = roundtrip(stack, stack.mtls_port, cert_args(stack, "alice"), t, "mutual")
        assert got == ["mutual"], err
    finally:
        stack.redis_cli("DEL", "mqtt_acl:alice")


def test_mtls_refused_without_certificate(stack):
    t = topic("n")
    got, err = roundtrip(stack, stack.mtls_port, ca_args(stack), t, "nope", timeout=3)
    assert got == []
    assert err.strip(), "mosquitto_sub reported no error"


def test_mtls_refused_with_certificate_from_another_ca(stack, tmp_path):
    """A client certificate signed by another CA (whose own CN is alice, too) is refused
    in the handshake."""
    other = tmp_path / "other"
    make_certs(other)  # a whole second PKI: its own CA and its own "alice"
    t = topic("o")
    got, err = roundtrip(stack, stack.mtls_port,
                         ["--cafile", tls(stack, "ca.crt")[0], "--cert", str(other / "alice.crt"),
                          "--key", str(other / "alice.key")], t, "nope", timeout=3)
    assert got == []
    # and alice's real certificate still works on the same listener
    stack.redis_cli("HSET", "mqtt_acl:alice", "tls/#", "3")
    try:
        got, err = roundtrip(stack, stack.mtls_port, cert_args(stack, "alice"), t, "yes")
        assert got == ["yes"], err
    finally:
        stack.redis_cli("DEL", "mqtt_acl:alice")


def test_identity_as_username(stack):
    """use_identity_as_username: the certificate's CN (alice) is the username — whatever
    username and password the CONNECT carries — and alice's ACL applies (mqtt_acl:alice
    allows alice/# only)."""
    stack.redis_cli("HSET", "mqtt_acl:alice", "alice/#", "3")
    try:
        mine, other = "alice/%s" % uuid.uuid4().hex[:8], "bob/%s" % uuid.uuid4().hex[:8]
        # a username that does not exist with a wrong password: ignored, the CN counts
        got, err = roundtrip(stack, stack.mtls_port, cert_args(stack, "alice"), mine, "to me",
                             user="mallory", password="wrong")
        assert got == ["to me"], err
        # outside the ACL: the subscription is refused
        got, err = roundtrip(stack, stack.mtls_port, cert_args(stack, "alice"), other, "x",
                             timeout=3)
        assert got == []
        # publishing: alice/# reaches a TCP subscriber, bob/... is dropped
        with lk.paho_client(stack, "watch-" + uuid.uuid4().hex[:6]) as w:
            w.subscribe([(mine, 0), (other, 0)])
            for t in (other, mine):
                lk.mosquitto_pub(stack.mtls_port, t, "from alice",
                                 extra=cert_args(stack, "alice"))
            m = w.messages.get(timeout=5)
            assert m.topic == mine
            w.messages.expect_none(quiet=0.5)
    finally:
        stack.redis_cli("DEL", "mqtt_acl:alice")


def test_tls_1_0_and_1_1_refused(stack, tmp_path):
    """TLS 1.2 and 1.3 only. The same openssl client that speaks TLS 1.1 to an s_server
    allowing it (the control) fails against ours."""
    def s_client(port, *opts):
        p = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port,
                            "-CAfile", tls(stack, "ca.crt")[0], *opts],
                           input="", capture_output=True, text=True, timeout=15)
        return p.returncode, p.stdout + p.stderr

    weak = ["-cipher", "DEFAULT@SECLEVEL=0"]
    for ver in ("-tls1", "-tls1_1"):
        rc, out = s_client(stack.tls_port, ver, *weak)
        assert rc != 0, out
    rc, out = s_client(stack.tls_port, "-tls1_2")
    assert rc == 0 and "TLSv1.2" in out, out
    rc, out = s_client(stack.tls_port, "-tls1_3")
    assert rc == 0 and "TLSv1.3" in out, out

    # control: the client can do TLS 1.1 where a server allows it
    port = lk.free_port()
    crt, key = tls(stack, "server.crt", "server.key")
    srv = subprocess.Popen(["openssl", "s_server", "-accept", "127.0.0.1:%d" % port, "-cert", crt,
                            "-key", key, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0",
                            "-quiet"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        lk.wait_until(lambda: _open(port), 5, what="openssl s_server")
        rc, out = s_client(port, "-tls1_1", *weak)
        assert rc == 0 and "TLSv1.1" in out, out
    finally:
        lk.stop_process(srv)


def _open(port):
    import socket
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _sighup_frontends(stack):
    for fe in FRONTENDS:
        subprocess.run(["s6-svc", "-h", stack.scan(fe)], check=True, timeout=10)


def _serial_seen(stack, port):
    p = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-CAfile",
                        tls(stack, "ca.crt")[0]], input="", capture_output=True, text=True,
                       timeout=15)
    x = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=p.stdout,
                       capture_output=True, text=True, timeout=10)
    return x.stdout.strip().split("=")[-1].upper()


def test_crl_revoked_certificate_refused_after_reload(stack):
    """bob's certificate works until it is revoked in the CRL and the frontends are told
    (SIGHUP); then the handshake refuses it. alice is not affected."""
    make_certs(stack.tls_dir, "sign", "bob", "bob")
    stack.redis_cli("HSET", "mqtt_acl:bob", "tls/#", "3")
    stack.redis_cli("HSET", "mqtt_acl:alice", "tls/#", "3")
    try:
        t = topic("crl")
        got, err = roundtrip(stack, stack.mtls_port, cert_args(stack, "bob"), t, "before")
        assert got == ["before"], err
        make_certs(stack.tls_dir, "revoke", tls(stack, "bob.crt")[0])
        marks = {fe: len(stack.log(fe)) for fe in FRONTENDS}
        _sighup_frontends(stack)
        for fe in FRONTENDS:
            lk.wait_until(lambda: "TLS reloaded" in stack.log(fe)[marks[fe]:], 10,
                          what="reload in %s" % fe)
        got, err = roundtrip(stack, stack.mtls_port, cert_args(stack, "bob"), t, "after",
                             timeout=3)
        assert got == []
        got, err = roundtrip(stack, stack.mtls_port, cert_args(stack, "alice"), t, "alice")
        assert got == ["alice"], err
    finally:
        stack.redis_cli("DEL", "mqtt_acl:bob", "mqtt_acl:alice")


def test_sighup_reloads_certificate_keeps_connections(stack):
    """A new server certificate (same CA, new serial) is served to new connections after
    SIGHUP; a connection made before keeps working."""
    old_serial = _serial_seen(stack, stack.tls_port)
    assert re.fullmatch(r"[0-9A-F]+", old_serial), old_serial
    t = topic("hup")
    sub = lk.mosquitto_sub_start(stack.tls_port, t, client_id="hup-" + uuid.uuid4().hex[:6],
                                 extra=ca_args(stack))
    try:
        # the subscription is in place once a publish comes back
        def first():
            lk.mosquitto_pub(stack, t, "one", check=False)
            return _has_line(sub)
        lk.wait_until(first, 10, interval=0.3, what="first message over TLS")
        make_certs(stack.tls_dir, "sign", "server", "localhost", "server")
        new_serial = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in",
                                     tls(stack, "server.crt")[0]], capture_output=True,
                                    text=True, timeout=10).stdout.strip().split("=")[-1].upper()
        assert new_serial != old_serial
        marks = {fe: len(stack.log(fe)) for fe in FRONTENDS}
        _sighup_frontends(stack)
        for fe in FRONTENDS:
            lk.wait_until(lambda: new_serial in stack.log(fe)[marks[fe]:].upper(), 10,
                          what="reload with serial %s in %s" % (new_serial, fe))
        # both frontends serve the new certificate (the kernel spreads connections)
        for _ in range(6):
            assert _serial_seen(stack, stack.tls_port) == new_serial
        # the old connection still works
        lk.mosquitto_pub(stack, t, "two")
        lk.wait_until(lambda: _has_line(sub, "two"), 10, what="message after reload")
        assert sub.poll() is None
    finally:
        out, err = lk.stop_process(sub)


def _has_line(proc, text=None):
    """Reads what proc printed so far without blocking (raw reads of its stdout: a text
    wrapper's buffer would hide lines from select); true when a line (containing text)
    came."""
    import select
    fd = proc.stdout.fileno()
    data = getattr(proc, "_raw", b"")
    while select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    proc._raw = data
    lines = data.decode(errors="replace").splitlines()
    return any(text is None or text in ln for ln in lines)
