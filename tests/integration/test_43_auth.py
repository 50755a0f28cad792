"""43: authentication backends with real clients (mosquitto_pub / mosquitto_sub -u -P).

- the seed's Redis layout (mqtt_user:<name> `password`, mqtt_acl:<name> 1/2/3) through the
  shared stack, users made with `latchkey passwd` / `latchkey acl set`;
- a second auth process (its own ipc endpoint) chaining a Mosquitto password file, the
  seed layout and EMQX 5's layout (mqtt:<name> password_hash/salt/is_superuser, ACL values
  subscribe/publish/all), allow_anonymous false, behind its own mqtt-frontend: a user added
  with `mosquitto_passwd` logs in (also after a SIGHUP reload), EMQX users written by
  `latchkey passwd` in the EMQX layout and by hand with redis-cli log in, ACLs are enforced,
  anonymous and wrong passwords are refused;
- bcrypt (crypt(3) $2b$) as the EMQX algorithm.
"""
import os
import shutil
import signal
import subprocess
import time

import pytest

import lk
import sechelp

RUN = "%d" % os.getpid()


@pytest.fixture(autouse=True)
def _need(stack):
    stack.require("router", "session-store", "auth", "mqtt-frontend-1")


def _pub(port, topic, msg, user, pw, qos=1, version="mqttv311"):
    return lk.mosquitto_pub(port, topic, msg, qos=qos, username=user, password=pw,
                            protocol=version, check=False, timeout=10)


def _sub_bg(port, topic, user, pw, count=1, timeout=8):
    args = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", "1",
            "-C", str(count), "-W", str(timeout)]
    if user is not None:
        args += ["-u", user, "-P", pw]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def _round_trip(port, topic, sub_cred, pub_cred, payload, timeout=8):
    """mosquitto_sub (sub_cred) gets what mosquitto_pub (pub_cred) sends? -> payloads"""
    port = getattr(port, "mqtt_port", port)
    sub = _sub_bg(port, topic, *sub_cred, timeout=timeout)
    try:
        time.sleep(0.5)  # mosquitto_sub is subscribed by then (bounded: -W)
        p = _pub(port, topic, payload, *pub_cred)
        assert p.returncode == 0, p.stderr
        out, err = sub.communicate(timeout=15)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.communicate(timeout=5)
    return out.split()


def test_seed_layout_on_the_stack(stack):
    user, pw = "seed-" + RUN, "pw-seed-" + RUN
    sechelp.cli(stack, "passwd", user, pw)
    sechelp.cli(stack, "acl", "set", user, "seed/%u/#", "both")
    assert stack.redis_cli("HGET", "mqtt_user:" + user, "password").startswith("$7$")
    assert stack.redis_cli("HGET", "mqtt_acl:" + user, "seed/%u/#") == "3"
    topic = "seed/%s/x" % user
    assert _round_trip(stack, topic, (user, pw), (user, pw), "hello") == ["hello"]
    bad = _pub(stack.mqtt_port, topic, "x", user, "wrong")
    assert bad.returncode != 0, bad.stderr
    # v5: the refusal is 0x86
    r, rc = sechelp.raw_connect(stack.mqtt_port, "seed-v5-" + RUN, 5, user, "wrong")
    r.close()
    assert rc == 0x86


@pytest.fixture
def chain(stack, tmp_path):
    """auth (file redis emqx, no anonymous) + its frontend; yields (auth, fe, pwfile)."""
    if not shutil.which("mosquitto_passwd"):
        pytest.skip("mosquitto_passwd not installed")
    pwfile = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pwfile), "filer-" + RUN, "pw-file"],
                   check=True, timeout=10, capture_output=True)
    aclfile = tmp_path / "acl"
    aclfile.write_text("user filer-%s\ntopic readwrite file/#\n" % RUN)
    au = sechelp.auth(stack, auth_backends="file redis emqx", password_file=pwfile,
                      acl_file=aclfile, allow_anonymous="false",
                      emqx_password_hash="sha256", emqx_salt_position="prefix")
    try:
        fe = sechelp.frontend(stack, auth_endpoint=au.endpoint)
        try:
            yield au, fe, pwfile
        finally:
            fe.stop()
    finally:
        au.stop()


def test_password_file_user(stack, chain):
    au, fe, pwfile = chain
    user = "filer-" + RUN
    assert _round_trip(fe.port, "file/a", (user, "pw-file"), (user, "pw-file"), "f1") == ["f1"]
    assert _pub(fe.port, "file/a", "x", user, "nope").returncode != 0
    # a user added afterwards with mosquitto_passwd logs in once auth reloaded (SIGHUP)
    subprocess.run(["mosquitto_passwd", "-b", str(pwfile), "later-" + RUN, "pw-later"],
                   check=True, timeout=10, capture_output=True)
    assert _pub(fe.port, "file/b", "x", "later-" + RUN, "pw-later").returncode != 0
    os.kill(au.p.pid, signal.SIGHUP)
    lk.wait_until(lambda: "password file" in au.log() and "users" in au.log(), 5,
                  what="auth reloaded")
    p = _pub(fe.port, "file/b", "x", "later-" + RUN, "pw-later")
    assert p.returncode == 0, p.stderr


def test_anonymous_refused(stack, chain):
    au, fe, _ = chain
    p = lk.mosquitto_pub(fe.port, "any", "x", check=False)
    assert p.returncode != 0
    r, rc = sechelp.raw_connect(fe.port, "anon-" + RUN, 5)
    r.close()
    assert rc == 0x87


def test_emqx_layout_by_cli(stack, chain):
    au, fe, _ = chain
    user, pw = "emx-" + RUN, "pw-emqx-" + RUN
    cli = dict(auth_backends="emqx redis", auth_endpoint=au.endpoint)
    sechelp.cli(stack, "passwd", user, pw, **cli)
    sechelp.cli(stack, "acl", "set", user, "emqx/%u/in", "sub", **cli)
    sechelp.cli(stack, "acl", "set", user, "emqx/%u/out", "pub", **cli)
    # EMQX 5's fields and values
    h = stack.redis_cli("HGET", "mqtt:" + user, "password_hash")
    salt = stack.redis_cli("HGET", "mqtt:" + user, "salt")
    assert len(h) == 64 and salt, (h, salt)
    import hashlib
    assert hashlib.sha256((salt + pw).encode()).hexdigest() == h
    assert stack.redis_cli("HGET", "mqtt_acl:" + user, "emqx/%u/in") == "subscribe"
    assert stack.redis_cli("HGET", "mqtt_acl:" + user, "emqx/%u/out") == "publish"
    assert stack.redis_cli("EXISTS", "mqtt_user:" + user) == "0"
    show = sechelp.cli(stack, "acl", "show", user, **cli).stdout
    assert "sub" in show and "pub" in show
    # the publisher may publish to out, the subscriber read in: a superuser relays
    boss, bpw = "emxboss-" + RUN, "pw-boss"
    sechelp.cli(stack, "passwd", boss, bpw, **cli)
    sechelp.cli(stack, "user", "superuser", boss, "on", **cli)
    out = "emqx/%s/out" % user
    assert _round_trip(fe.port, out, (boss, bpw), (user, pw), "e1") == ["e1"]
    inn = "emqx/%s/in" % user
    assert _round_trip(fe.port, inn, (user, pw), (boss, bpw), "e2") == ["e2"]
    # outside its ACL: subscribe refused, publish dropped (3.1.1)
    sub = _sub_bg(fe.port, "emqx/%s/other" % user, user, pw, timeout=2)
    _, err = sub.communicate(timeout=15)
    assert "denied" in err.lower() or "refused" in err.lower() or sub.returncode != 0, err
    assert _round_trip(fe.port, "emqx/%s/x" % user, (boss, bpw), (user, pw), "no",
                       timeout=2) == []
    assert _pub(fe.port, out, "x", user, "wrong").returncode != 0


def test_emqx_layout_by_hand(stack, chain):
    """The example of EMQX's documentation shape: HSET mqtt:<user> password_hash <sha256 of
    salt+password> salt <salt> is_superuser ...; ACL `HSET mqtt_acl:<user> t/1 subscribe`."""
    au, fe, _ = chain
    import hashlib
    user, pw, salt = "hand-" + RUN, "public", "slat_foo123"
    stack.redis_cli("HSET", "mqtt:" + user, "password_hash",
                    hashlib.sha256((salt + pw).encode()).hexdigest(), "salt", salt,
                    "is_superuser", "0")
    stack.redis_cli("HSET", "mqtt_acl:" + user, "hand/${username}/#", "all")
    stack.redis_cli("HSET", "mqtt_acl:" + user, "hand/json", '{"action": "publish"}')
    topic = "hand/%s/t" % user
    assert _round_trip(fe.port, topic, (user, pw), (user, pw), "h1") == ["h1"]
    assert _pub(fe.port, "hand/json", "x", user, pw).returncode == 0
    assert _pub(fe.port, topic, "x", user, "publix").returncode != 0


def test_seed_user_through_the_chain(stack, chain):
    au, fe, _ = chain
    user, pw = "chain-seed-" + RUN, "pw-cs"
    sechelp.cli(stack, "passwd", user, pw)
    sechelp.cli(stack, "acl", "set", user, "cs/#", "both")
    assert _round_trip(fe.port, "cs/1", (user, pw), (user, pw), "c1") == ["c1"]


def test_emqx_bcrypt(stack):
    au = sechelp.auth(stack, auth_backends="emqx", emqx_password_hash="bcrypt",
                      allow_anonymous="false")
    try:
        with sechelp.frontend(stack, auth_endpoint=au.endpoint) as fe:
            user, pw = "bc-" + RUN, "pw-bcrypt"
            cli = dict(auth_backends="emqx", emqx_password_hash="bcrypt")
            sechelp.cli(stack, "passwd", user, pw, **cli)
            sechelp.cli(stack, "acl", "set", user, "bc/#", "both", **cli)
            assert stack.redis_cli("HGET", "mqtt:" + user, "password_hash").startswith("$2b$")
            assert _round_trip(fe.port, "bc/1", (user, pw), (user, pw), "b1") == ["b1"]
            assert _pub(fe.port, "bc/1", "x", user, "pw-bcrypT").returncode != 0
    finally:
        au.stop()


def test_bus_curve_over_tcp(stack, tmp_path):
    """auth serves tcp://127.0.0.1 with CurveZMQ (keys from `latchkey keygen`): a frontend
    with an admitted certificate logs users in through it; one whose certificate is not
    admitted, and one without keys, never reach auth (CONNACK server unavailable); auth
    refuses to serve tcp:// in plaintext without keys."""
    keys, allowed, servers = tmp_path / "keys", tmp_path / "allowed", tmp_path / "servers"
    sechelp.cli(stack, "keygen", keys, "auth", "fe-good", "fe-bad")
    allowed.mkdir()
    servers.mkdir()
    shutil.copy(keys / "fe-good.key", allowed / "fe-good.key")
    shutil.copy(keys / "auth.key", servers / "auth.key")
    assert oct((keys / "auth.key_secret").stat().st_mode & 0o777) == "0o600"
    endpoint = "tcp://127.0.0.1:%d" % lk.free_port({stack.mqtt_port})
    with pytest.raises(RuntimeError):
        sechelp.auth(stack, auth_endpoint=endpoint)       # no keys: refused, exits
    au = sechelp.auth(stack, auth_endpoint=endpoint, bus_curve_secret=keys / "auth.key_secret",
                      bus_curve_public_dir=allowed)
    user, pw = "curve-" + RUN, "pw-curve"
    sechelp.cli(stack, "passwd", user, pw)
    sechelp.cli(stack, "acl", "set", user, "curve/#", "both")
    try:
        with sechelp.frontend(stack, auth_endpoint=endpoint, request_timeout_ms=1500,
                              bus_curve_secret=keys / "fe-good.key_secret",
                              bus_curve_server_dir=servers) as fe:
            assert _round_trip(fe.port, "curve/1", (user, pw), (user, pw), "c1") == ["c1"]
        for extra in (dict(bus_curve_secret=keys / "fe-bad.key_secret",
                           bus_curve_server_dir=servers),
                      dict(bus_allow_plaintext_tcp="true")):
            with sechelp.frontend(stack, auth_endpoint=endpoint, request_timeout_ms=1500,
                                  **extra) as fe:
                r, rc = sechelp.raw_connect(fe.port, "curve-x-" + RUN, 5, user, pw, timeout=6)
                r.close()
                assert rc == 0x88, hex(rc)
    finally:
        au.stop()
    assert "refused client" not in au.log()
