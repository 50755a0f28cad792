"""22: the smart lock attacked (issue 13): the broker guards a registered lock's topics
whatever allow_anonymous and the other ACL sources say, and access that is taken away ends
at once.

The stack runs as shipped (allow_anonymous true, no ACL file: anonymous clients get `#`).
Attackers: an anonymous client, a permanent user with a broad ACL (`#`), and the temporary
login of a user bound to the lock. Each tries to publish `unlock` on /<lock>/call, fake a
state on /<lock>/statu, leave a Last Will on /<lock>/call, and read /<lock>/# or `#`.
"""

import os
import time
import uuid

import pytest

import lk
import mqttraw
from lockhelp import DEVICES, cli, device, events, mqtt_account, setup_lock

RUN = uuid.uuid4().hex[:6]
PW = "secret-pw-22"


def login(stack, user, *opts):
    p = cli(stack, "login", *opts, user)
    out = dict(line.split(" ", 1) for line in p.stdout.strip().splitlines())
    return out


@pytest.fixture(scope="module")
def world(stack):
    stack.require("lock-arbiter", "mqtt-frontend-1", "router", "session-store", "auth")
    w = {"m": "sm-" + RUN, "f": "sf-" + RUN, "wide": "wide-" + RUN, "L": "S" + RUN,
         "O": "SO" + RUN}
    for u in (w["m"], w["f"]):
        mqtt_account(stack, u, PW)
    cli(stack, "passwd", w["wide"], PW)
    cli(stack, "acl", "set", w["wide"], "#", "both")
    setup_lock(stack, w["L"], [(w["m"], "m"), (w["f"], "f")])
    setup_lock(stack, w["O"], [(w["f"], "m")])
    return w


class Raw5:
    """A raw MQTT 5 connection (mqttraw): PUBACK reason codes as they come."""

    def __init__(self, stack, client_id, username=None, password=None):
        self.c = mqttraw.Conn(stack.mqtt_port)
        self.c.send(mqttraw.connect(client_id, version=5, username=username,
                                    password=password))
        t, _, body = self.c.read_packet()
        assert t == 2 and body[1] == 0, body
        self.pid = 0

    def publish_rc(self, topic, payload):
        self.pid += 1
        self.c.send(mqttraw.publish(topic, payload.encode(), qos=1, pid=self.pid, version=5))
        while True:
            t, _, body = self.c.read_packet()
            if t == 4:
                return body[2] if len(body) > 2 else 0

    def disconnect(self):
        self.c.send(bytes([0xE0, 0]))
        self.c.close()


def _v5_publish_rc(c, topic, payload):
    return c.publish_rc(topic, payload)


def test_lock_add_prints_device_credential(stack, world):
    user, pw = DEVICES[world["L"]]
    assert user == "lock-" + world["L"] and pw and len(pw) >= 20
    acl = cli(stack, "acl", "show", user).stdout
    assert "/%s/statu" % world["L"] in acl and "/%s/call" % world["L"] in acl
    out = cli(stack, "lock", "list").stdout
    assert [x for x in out.splitlines() if x.startswith(world["L"] + "\t")][0] \
        .count("device=" + user) == 1
    # adding the lock again keeps the credential (the device still logs in)
    cli(stack, "lock", "add", world["L"])
    dev = device(stack, world["L"], client_id="devcheck-" + RUN)
    dev.disconnect()
    # the device may not confirm, nor read another lock
    d5 = Raw5(stack, "devatk-" + RUN, username=user, password=pw)
    assert _v5_publish_rc(d5, "/%s/m" % world["L"], "1") == 0x87
    assert _v5_publish_rc(d5, "/%s/call" % world["L"], "unlock") == 0x87
    assert _v5_publish_rc(d5, "/%s/statu" % world["O"], "0") == 0x87
    d5.disconnect()
    d3 = lk.paho_client(stack, "devatk3-" + RUN, username=user, password=pw)
    assert d3.subscribe("/%s/#" % world["O"], 1) == [128]
    d3.disconnect()


@pytest.mark.parametrize("who", ["anonymous", "wide", "temporary"])
def test_attacker_cannot_unlock_fake_state_or_read(stack, world, who):
    lock = world["L"]
    dev = device(stack, lock, client_id="dev-%s-%s" % (who, RUN))
    dev.publish("/%s/statu" % lock, "1", qos=1)
    lk.wait_until(lambda: stack.redis_cli("HGET", "lk:{arb}:lockstate", lock) == "1", 10,
                  what="real state")
    n_states = len(events(stack, lock, "lock_state"))
    if who == "anonymous":
        kw = {}
    elif who == "wide":
        kw = dict(username=world["wide"], password=PW)
    else:
        cred = login(stack, world["m"])
        kw = dict(username=cred["username"], password=cred["password"])
    # MQTT 5: the refusal is visible (PUBACK 0x87 not authorized)
    a5 = Raw5(stack, "atk5-%s-%s" % (who, RUN), **kw)
    assert _v5_publish_rc(a5, "/%s/call" % lock, "unlock") == 0x87
    assert _v5_publish_rc(a5, "/%s/statu" % lock, "0") == 0x87
    assert _v5_publish_rc(a5, "/%s/statu" % lock, "-2") == 0x87
    a5.disconnect()
    # MQTT 3.1.1: acknowledged and dropped; subscriptions to the lock refused unless bound
    a3 = lk.paho_client(stack, "atk3-%s-%s" % (who, RUN), **kw)
    a3.publish("/%s/call" % lock, "unlock", qos=1)
    a3.publish("/%s/call" % lock, "unlock", qos=0)
    a3.publish("/%s/statu" % lock, "0", qos=1)
    granted = a3.subscribe("/%s/#" % lock, 1)
    if who == "temporary":
        assert granted == [1]               # bound users read their lock
    else:
        assert granted == [128]
        # `#` and `/+/call` are granted for the rest, but no lock traffic gets through
        assert a3.subscribe("#", 1) == [1] if who != "temporary" else True
        assert a3.subscribe("/+/call", 1) == [1]
    # a Last Will on the call topic is refused at CONNECT
    with pytest.raises(lk.ConnectError):
        lk.paho_client(stack, "atkw-%s-%s" % (who, RUN),
                       will=dict(topic="/%s/call" % lock, payload="unlock", qos=1), **kw)
    dev.messages.expect_none(1.0)
    # nothing reached the device, the state and history did not move
    assert stack.redis_cli("HGET", "lk:{arb}:lockstate", lock) == "1"
    assert len(events(stack, lock, "lock_state")) == n_states
    # the lock's own traffic (a state change, a real unlock) stays hidden from outsiders
    if who != "temporary":
        dev.publish("/%s/statu" % lock, "0", qos=1)
        with lk.paho_client(stack, "okm-%s-%s" % (who, RUN), username=world["m"],
                            password=PW) as m, \
                lk.paho_client(stack, "okf-%s-%s" % (who, RUN), username=world["f"],
                               password=PW) as f:
            m.publish("/%s/m" % lock, "1", qos=1)
            f.publish("/%s/f" % lock, "1", qos=1)
            assert dev.messages.get(timeout=10).payload == b"unlock"
        leaked = [m.topic for m in a3.messages.drain(quiet=1.0) if m.topic.startswith("/" + lock)]
        assert leaked == []
    a3.disconnect()
    dev.disconnect()


def test_bound_user_confirms_only_its_roles(stack, world):
    cred = login(stack, world["f"])       # bound to L as f and to O as m
    c = Raw5(stack, "bnd-" + RUN, username=cred["username"], password=cred["password"])
    assert _v5_publish_rc(c, "/%s/f" % world["L"], "1") == 0
    assert _v5_publish_rc(c, "/%s/m" % world["L"], "1") == 0x87
    assert _v5_publish_rc(c, "/%s/m" % world["O"], "1") == 0
    c.disconnect()


def _connected(stack, cred, tag):
    return lk.paho_client(stack, "%s-%s" % (tag, RUN), username=cred["username"],
                          password=cred["password"])


def test_unbind_ends_temporary_logins_at_once(stack, world):
    u = "ub-" + RUN
    lock = "SU" + RUN
    mqtt_account(stack, u, PW)
    setup_lock(stack, lock, [(u, "m")])
    cred = login(stack, u)
    c = _connected(stack, cred, "ub")
    perm = lk.paho_client(stack, "ubp-" + RUN, username=u, password=PW)
    assert perm.subscribe("/%s/#" % lock, 1) == [1]
    assert cred["username"] in cli(stack, "login", "list", u).stdout
    t0 = time.monotonic()
    cli(stack, "unbind", u, lock)
    c.wait_disconnected(timeout=5)
    took = time.monotonic() - t0
    assert took < 3.0, took                 # the CLI's own run included
    assert stack.redis_cli("EXISTS", "mqtt_user:" + cred["username"]) == "0"
    with pytest.raises(lk.ConnectError):
        _connected(stack, cred, "ub2")
    assert cred["username"] not in cli(stack, "login", "list").stdout
    # the permanent account stays connected but reads the lock no more
    dev = device(stack, lock, client_id="ubdev-" + RUN)
    dev.publish("/%s/statu" % lock, "1", qos=1)
    assert [m for m in perm.messages.drain(quiet=1.0) if m.topic.startswith("/" + lock)] == []
    perm.disconnect()
    dev.disconnect()


@pytest.mark.parametrize("how", ["user del", "lock del", "revoke"])
def test_access_that_ends(stack, world, how):
    u = "end%s-%s" % (how[0], RUN)
    lock = "SE%s%s" % (how[0], RUN)
    mqtt_account(stack, u, PW)
    setup_lock(stack, lock, [(u, "m")])
    cred = login(stack, u)
    c = _connected(stack, cred, "end" + how[0])
    perm = lk.paho_client(stack, "endp%s-%s" % (how[0], RUN), username=u, password=PW)
    if how == "user del":
        cli(stack, "user", "del", u)
    elif how == "lock del":
        cli(stack, "lock", "del", lock)
    else:
        cli(stack, "revoke", u)
    c.wait_disconnected(timeout=3)
    with pytest.raises(lk.ConnectError):
        _connected(stack, cred, "end2" + how[0])
    if how == "revoke":
        perm.wait_disconnected(timeout=3)
        with pytest.raises(lk.ConnectError):   # the password is invalid too
            lk.paho_client(stack, "endp2-" + RUN, username=u, password=PW)
    else:
        perm.disconnect()
    if how == "lock del":
        # the device credential is gone with the lock
        user, pw = DEVICES[lock]
        with pytest.raises(lk.ConnectError):
            lk.paho_client(stack, "enddev-" + RUN, username=user, password=pw)


def test_login_refresh_and_expiry(stack, world):
    cred = login(stack, world["m"], "--ttl", "3")
    c = _connected(stack, cred, "rf")
    out = cli(stack, "login", "refresh", "--ttl", "60", cred["username"]).stdout
    assert "expires_at_ms=" in out
    assert int(stack.redis_cli("TTL", "mqtt_user:" + cred["username"])) > 30
    assert not c.disconnected.wait(4.5)     # past the first expiry: still connected
    cli(stack, "login", "end", cred["username"])
    c.wait_disconnected(timeout=3)
    p = cli(stack, "login", "end", world["m"], check=False)   # never a permanent account
    assert p.returncode == 1


def test_device_with_client_certificate(stack, world):
    """`lock add --cert`: the device logs in with a client certificate (CN = its username)
    on the mutual-TLS listener, no password; it may report its state, nobody else may."""
    import subprocess
    lock = "SC" + RUN
    dev_user = "lock-" + lock
    out = cli(stack, "lock", "add", "--cert", lock).stdout
    assert "CN=" + dev_user in out and "device password" not in out
    make_certs = os.path.join(lk.ROOT, "supervise", "make-certs")
    subprocess.run([make_certs, stack.tls_dir, "sign", "dev" + RUN, "/CN=" + dev_user],
                   check=True, timeout=60, capture_output=True)
    tls = lambda n: os.path.join(stack.tls_dir, n)  # noqa: E731
    args = ["--cafile", tls("ca.crt"), "--cert", tls("dev%s.crt" % RUN),
            "--key", tls("dev%s.key" % RUN)]
    lk.mosquitto_pub(stack.mtls_port, "/%s/statu" % lock, "1", qos=1, extra=args)
    lk.wait_until(lambda: stack.redis_cli("HGET", "lk:{arb}:lockstate", lock) == "1", 10,
                  what="the certificate device's state")
    # alice's certificate (another CN) may not
    alice = ["--cafile", tls("ca.crt"), "--cert", tls("alice.crt"), "--key", tls("alice.key")]
    lk.mosquitto_pub(stack.mtls_port, "/%s/statu" % lock, "0", qos=1, extra=alice, check=False)
    time.sleep(1.0)
    assert stack.redis_cli("HGET", "lk:{arb}:lockstate", lock) == "1"


def test_confirmations_that_waited_too_long_are_refused():
    """Two confirmations stored while every arbiter is down, handled once it is back past
    lock_confirm_max_age: refused as too old, no unlock (the people who confirmed may be
    long gone). Fresh confirmations then grant as usual."""
    st = lk.Stack()
    st.env["LATCHKEY_LOCK_CONFIRM_MAX_AGE"] = "2"
    try:
        st.start_all()
        st.require("lock-arbiter", "mqtt-frontend-1", "router", "session-store", "auth")
        lock, um, uf = "OLD" + RUN, "om-" + RUN, "of-" + RUN
        for u in (um, uf):
            mqtt_account(st, u, PW)
        setup_lock(st, lock, [(um, "m"), (uf, "f")])
        dev = device(st, lock)
        m = lk.paho_client(st, "om-" + RUN, username=um, password=PW)
        f = lk.paho_client(st, "of-" + RUN, username=uf, password=PW)
        st.hold_down("lock-arbiter")
        try:
            # stored for the arbiter's session: PUBACKed while it is down
            assert m.publish("/%s/m" % lock, "1", qos=1).rc == 0
            assert f.publish("/%s/f" % lock, "1", qos=1).rc == 0
            time.sleep(3.0)
        finally:
            st.bring_up("lock-arbiter")
        got = lk.wait_until(lambda: (lambda d: len(d) >= 2 and d)(
            [e["details"] for e in events(st, lock, "unlock_decision")]), 15,
            what="the refusals")
        assert [d["decision"] for d in got] == ["refused", "refused"], got
        assert all("too old" in d["reason"] for d in got), got
        dev.messages.expect_none(quiet=1.5)
        m.publish("/%s/m" % lock, "1", qos=1)
        f.publish("/%s/f" % lock, "1", qos=1)
        assert dev.messages.get(timeout=10).payload == b"unlock"
        for c in (m, f, dev):
            c.disconnect()
    finally:
        st.destroy()
