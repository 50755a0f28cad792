"""45: live revocation. An ACL change (`latchkey acl set`) reaches connected clients at
once without a reconnect (CLI -> auth -> frontends: Revoke{acl_changed}, each frontend
re-reads the ACL with AuthRequest{acl_only}); a subscription the new rules forbid is
dropped; deleting the user (`latchkey passwd -d`) disconnects its client (v5 DISCONNECT
0x98) and later logins fail; a SIGHUP of auth after a user left the password file
disconnects that user's clients.

The clients are raw MQTT 5 sockets (sechelp.Raw), so the PUBACK reason codes can be read."""
import os
import signal
import subprocess
import time

import pytest

import lk
import sechelp

RUN = "%d" % os.getpid()


@pytest.fixture(autouse=True)
def _need(stack):
    stack.require("router", "session-store", "auth", "mqtt-frontend-1", "mqtt-frontend-2")


def _puback(r, topic, pid):
    """QoS 1 PUBLISH; the PUBACK reason code (0 when absent)"""
    r.send(sechelp.publish_packet(topic, b"p%d" % pid, qos=1, pid=pid, version=5))
    while True:
        pkt = r.read_packet(5.0)
        assert pkt is not None, "connection closed"
        head, body = pkt
        if head == 0x40 and body[:2] == pid.to_bytes(2, "big"):
            return body[2] if len(body) > 2 else 0


def _user(stack, tag, *rules):
    user, pw = "%s-%s" % (tag, RUN), "pw-%s-%s" % (tag, RUN)
    sechelp.cli(stack, "passwd", user, pw)
    for f, right in rules:
        sechelp.cli(stack, "acl", "set", user, f, right)
    return user, pw


def test_acl_change_reaches_connected_client(stack):
    user, pw = _user(stack, "rv", ("rv/%u/a", "both"))
    a, b = "rv/%s/a" % user, "rv/%s/b" % user
    r, rc = sechelp.raw_connect(stack.mqtt_port, "rv-" + RUN, 5, user, pw)
    watcher = lk.paho_client(stack, "rv-watch-" + RUN)     # anonymous: everything
    try:
        assert rc == 0
        watcher.subscribe("rv/%s/#" % user, 1)
        assert _puback(r, a, 1) == 0
        assert _puback(r, b, 2) == 0x87
        assert [m.topic for m in watcher.messages.wait_for(1)] == [a]
        # grant b: the same connection may publish there within a second
        t0 = time.monotonic()
        sechelp.cli(stack, "acl", "set", user, "rv/%u/b", "pub")
        pid = 3
        while _puback(r, b, pid) != 0:
            assert time.monotonic() - t0 < 2.0, "ACL grant not applied within 2 s"
            pid += 1
            time.sleep(0.05)
        print("grant applied %.0f ms after the CLI started" % ((time.monotonic() - t0) * 1e3))
        assert watcher.messages.wait_for(1)[0].topic == b
        # the client subscribes to a, then a is taken away: publish refused, subscription gone
        r.send(sechelp.subscribe_packet([(a, 1)], pid=50, version=5))
        while True:
            head, body = r.read_packet(5.0)
            if head == 0x90:
                assert body[-1] == 1, body
                break
        sechelp.cli(stack, "acl", "set", user, "rv/%u/a", "none")
        t0 = time.monotonic()
        pid = 100
        while _puback(r, a, pid) != 0x87:
            assert time.monotonic() - t0 < 2.0, "ACL removal not applied within 2 s"
            pid += 1
            time.sleep(0.05)
        # drain what the subscription delivered so far, then nothing more arrives on a
        watcher.publish(a, "after", qos=1)
        deadline = time.monotonic() + 1.0
        got = []
        r.s.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                pkt = r.read_packet(0.2)
            except OSError:
                continue
            if pkt and pkt[0] & 0xF0 == 0x30:
                got.append(pkt[1])
        assert not any(b"after" in p for p in got), got
        # still the same connection: no reconnect happened
        assert _puback(r, b, 999) == 0
    finally:
        r.close()
        watcher.disconnect()
    def logged():
        log = stack.log("mqtt-frontend-1") + stack.log("mqtt-frontend-2")
        return "ACL updated" in log or "re-reading it" in log
    lk.wait_until(logged, 10, what="the frontends' ACL update log line")


def test_deleted_user_is_disconnected(stack):
    user, pw = _user(stack, "del", ("del/#", "both"))
    r4 = lk.paho_client(stack, "del4-" + RUN, username=user, password=pw)
    r, rc = sechelp.raw_connect(stack.mqtt_port, "del5-" + RUN, 5, user, pw)
    try:
        assert rc == 0
        t0 = time.monotonic()
        sechelp.cli(stack, "passwd", "-d", user)
        pkt = r.read_packet(3.0)
        assert pkt is not None and pkt[0] == 0xE0 and pkt[1][0] == 0x98, pkt
        assert r.closed(2.0)
        r4.wait_disconnected(3.0)
        assert time.monotonic() - t0 < 3.0
        r2, rc = sechelp.raw_connect(stack.mqtt_port, "del5b-" + RUN, 5, user, pw)
        r2.close()
        assert rc == 0x86
    finally:
        r.close()
        r4.close()


def test_sighup_drops_users_gone_from_the_password_file(stack, tmp_path):
    pwfile = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pwfile), "stay-" + RUN, "pw"],
                   check=True, timeout=10, capture_output=True)
    subprocess.run(["mosquitto_passwd", "-b", str(pwfile), "go-" + RUN, "pw"],
                   check=True, timeout=10, capture_output=True)
    au = sechelp.auth(stack, auth_backends="file", password_file=pwfile,
                      allow_anonymous="false", acl_nomatch="allow")
    try:
        with sechelp.frontend(stack, auth_endpoint=au.endpoint) as fe:
            stay, rc1 = sechelp.raw_connect(fe.port, "stay-" + RUN, 5, "stay-" + RUN, "pw")
            go, rc2 = sechelp.raw_connect(fe.port, "go-" + RUN, 5, "go-" + RUN, "pw")
            try:
                assert rc1 == 0 and rc2 == 0
                subprocess.run(["mosquitto_passwd", "-D", str(pwfile), "go-" + RUN],
                               check=True, timeout=10, capture_output=True)
                os.kill(au.p.pid, signal.SIGHUP)
                pkt = go.read_packet(3.0)
                assert pkt is not None and pkt[0] == 0xE0 and pkt[1][0] == 0x98, pkt
                assert _puback(stay, "still/here", 1) == 0
            finally:
                stay.close()
                go.close()
    finally:
        au.stop()
