"""ota-distributor, the registry and the device side: `latchkey ota` (keys, images,
devices), the per-user topic mount point that ThingsBoard devices need, the two MQTT
protocols' requests and their refusals, and HTTP downloads (Range, ETag, HEAD, Basic and
signed URLs). Rollouts are test_61_ota_rollout.py."""
import base64
import hashlib
import json
import os
import time
import urllib.error
import urllib.request

import pytest

import lk
from lockhelp import cli
import otahelp as oh


@pytest.fixture(autouse=True)
def need(stack):
    stack.require("ota-distributor", "auth", "router", "mqtt-frontend-1")


def superuser(stack, name):
    cli(stack, "passwd", name, "pw-" + name)
    cli(stack, "user", "superuser", name, "on")
    return name, "pw-" + name


def test_registry_add_list_rm(stack):
    data, sha = oh.image(stack, "reg1", "1.0", 5000)
    # stored content-addressed, signed over the SHA-256 with the key's Ed25519
    path = os.path.join(stack.run_dir, "data", "ota", sha[:2], sha)
    with open(path, "rb") as f:
        assert f.read() == data
    rows = json.loads(cli(stack, "ota", "list", "--model", "reg1", "--json").stdout)
    assert [(r["version"], r["sha256"], r["size"]) for r in rows] == [("1.0", sha, 5000)]
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    with open(os.path.join(oh.keydir(stack), "ota.pub"), "rb") as f:
        pub = load_pem_public_key(f.read())
    pub.verify(base64.b64decode(rows[0]["signature"]), bytes.fromhex(sha))  # raises if bad
    # the same bytes again: fine; other bytes under the same model/version: refused
    oh.image(stack, "reg1", "1.0", 5000, seed=data)
    with pytest.raises(AssertionError, match="other bytes"):
        oh.image(stack, "reg1", "1.0", 5001)
    # rm: refused while a rollout uses the image, done once it is cancelled
    oh.devices(stack, "regd", 1, "reg1", "0.9")
    r = oh.create_rollout(stack, "--image", "reg1/1.0", "--target", "model=reg1,version<1.0")
    p = cli(stack, "ota", "rm", "--model", "reg1", "--version", "1.0", check=False)
    assert p.returncode == 1 and "rollout" in p.stderr
    cli(stack, "ota", "rollout", "cancel", r)
    oh.image(stack, "reg1", "2.0", 100)
    cli(stack, "ota", "rm", "--model", "reg1", "--version", "2.0")
    assert [x["version"] for x in json.loads(
        cli(stack, "ota", "list", "--model", "reg1", "--json").stdout)] == ["1.0"]
    # bad input is refused with a usage exit, never half-done
    assert cli(stack, "ota", "add", "--model", "a/b", "--version", "1", "/dev/null",
               check=False).returncode == 2


def test_device_credential_and_mountpoint(stack):
    p = cli(stack, "ota", "device", "add", "mnt1", "--model", "mm", "--version", "1.0")
    token = p.stdout.split("token ")[1].split()[0]
    assert len(token) >= 20  # generated and printed
    assert stack.redis_cli("HGET", "mqtt_user:" + token, "mountpoint") == "tb/mnt1/"
    admin = superuser(stack, "ota-admin")
    with lk.paho_client(stack, "mnt1-c", username=token) as dev, \
            lk.paho_client(stack, "mnt-admin", username=admin[0], password=admin[1]) as adm:
        adm.subscribe("tb/mnt1/#", qos=1)
        dev.subscribe("v1/devices/me/attributes", qos=1)
        # the device's own topics land under its mount point...
        dev.publish("v1/devices/me/telemetry", '{"x":1}', qos=1)
        m = adm.wait_for(1)[0]
        assert m.topic == "tb/mnt1/v1/devices/me/telemetry"
        # ...and what is published under it reaches the device without the prefix
        adm.publish("tb/mnt1/v1/devices/me/attributes", '{"y":2}', qos=1)
        got = dev.wait_for(1)[0]
        assert got.topic == "v1/devices/me/attributes" and got.payload == b'{"y":2}'
        # its ACL holds its OTA topics only
        assert list(dev.subscribe("other/#", qos=1)) == [128]
    # a wrong token is refused; removing the device ends its credential
    with pytest.raises(Exception):
        lk.paho_client(stack, "mnt1-bad", username=token + "x")
    cli(stack, "ota", "device", "rm", "mnt1")
    assert stack.redis_cli("EXISTS", "mqtt_user:" + token) == "0"
    devs = json.loads(cli(stack, "ota", "devices", "--model", "mm", "--json").stdout)
    assert devs == []


def _tb_error(dev, pub_topic, payload, want, timeout=10):
    dev.messages.drain(quiet=0.2)
    dev.publish(pub_topic, payload, qos=0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = dev.messages.get(timeout=deadline - time.monotonic())
        if m.topic == "v2/fw/error":
            assert want in m.payload.decode(), m.payload
            return m.payload.decode()
    raise AssertionError("no error for %s" % pub_topic)


def test_thingsboard_bad_requests_never_crash(stack):
    oh.image(stack, "badm", "2.0", 10000)
    (dev_id, tok), = oh.devices(stack, "bad", 1, "badm", "1.0")
    pid = stack.svc_pid("ota-distributor")
    with lk.paho_client(stack, dev_id, username=tok) as dev:
        dev.subscribe("v2/fw/error", qos=1)
        dev.subscribe("v2/fw/response/+/chunk/+", qos=1)
        _tb_error(dev, "v2/fw/request/1/chunk/0", "1024", "NOT_FOUND")  # nothing assigned
        oh.create_rollout(stack, "--image", "badm/2.0", "--target", "model=badm")
        lk.wait_until(lambda: stack.psql("SELECT state FROM ota_rollout_devices WHERE "
                                         "device_id = '%s'" % dev_id) == "offered", 20)
        _tb_error(dev, "v2/fw/request/2/chunk/0", "0", "chunk size 0")
        _tb_error(dev, "v2/fw/request/2/chunk/0", "99999999999", "PAYLOAD_TOO_LARGE")
        _tb_error(dev, "v2/fw/request/2/chunk/999999999999", "1000", "OUT_OF_RANGE")
        _tb_error(dev, "v2/fw/request/77/chunk/1", "", "unknown request id")
        _tb_error(dev, "v2/fw/request/x/chunk/1", "10", "BAD_REQUEST")
        _tb_error(dev, "v2/fw/request/3/chunk/0", "12a", "BAD_REQUEST")
        # a good one still works: bytes at chunk * size
        dev.messages.drain(quiet=0.2)
        dev.publish("v2/fw/request/5/chunk/3", "100", qos=0)
        m = dev.messages.get(timeout=10)
        assert m.topic == "v2/fw/response/5/chunk/3" and len(m.payload) == 100
    admin = superuser(stack, "ota-admin2")
    with lk.paho_client(stack, "bad-adm", username=admin[0], password=admin[1]) as adm:
        adm.subscribe("tb/nosuch/v2/fw/error", qos=1)
        adm.publish("tb/nosuch/v2/fw/request/1/chunk/0", "100")
        m = adm.wait_for(1)[0]
        assert b"unknown device" in m.payload
    assert stack.svc_pid("ota-distributor") == pid


def test_latchkey_protocol_errors_and_announcement(stack):
    data, sha = oh.image(stack, "lkm", "3.0", 3000)
    (dev_id, tok), = oh.devices(stack, "lke", 1, "lkm", "2.0", protocol="lk")
    with lk.paho_client(stack, dev_id, username=tok, protocol=lk.MQTTv5) as dev:
        dev.subscribe("lk/ota/announce/lkm/#", qos=1)
        ann = json.loads(dev.wait_for(1, timeout=15)[0].payload)
        assert ann["sha256"] == sha and ann["size"] == 3000 and ann["url"].endswith(sha)
        dev.subscribe("lk/ota/%s/#" % dev_id, qos=1)
        dev.messages.drain(quiet=0.2)
        for req, want in (("not json", "not a JSON object"),
                          ({"sha256": sha, "offset": -1, "length": 10}, "offset"),
                          ({"sha256": sha, "offset": 0, "length": 0}, "chunk size 0"),
                          ({"sha256": sha, "offset": 3001, "length": 10}, "OUT_OF_RANGE"),
                          ({"sha256": "0" * 64, "offset": 0, "length": 10}, "NOT_FOUND"),
                          ({"sha256": sha, "offset": 0, "length": 10, "reply": "x/y"},
                           "reply topic")):
            dev.publish("lk/ota/%s/req" % dev_id,
                        req if isinstance(req, str) else json.dumps(req), qos=1)
            while True:
                m = dev.messages.get(timeout=10)
                if m.topic.endswith("/error"):
                    break
            assert want in json.loads(m.payload)["error"], (req, m.payload)
        # 3.1.1 form: the bytes on lk/ota/<id>/chunk/<offset>
        dev.publish("lk/ota/%s/req" % dev_id,
                    json.dumps({"sha256": sha, "offset": 1000, "length": 500}), qos=1)
        while True:
            m = dev.messages.get(timeout=10)
            if m.topic.startswith("lk/ota/%s/chunk/" % dev_id):
                break
        assert m.topic.endswith("/chunk/1000") and m.payload == data[1000:1500]


def _get(url, auth=None, rng=None, method="GET"):
    req = urllib.request.Request(url, method=method)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(
            (auth + ":").encode()).decode())
    if rng:
        req.add_header("Range", rng)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_http_download_ranges_and_auth(stack):
    data, sha = oh.image(stack, "httpm", "1.0", 70000)
    (dev_id, tok), = oh.devices(stack, "http", 1, "httpm", "0.1")
    (_, other_tok), = oh.devices(stack, "httpo", 1, "otherm", "0.1")
    base = "http://127.0.0.1:%d/ota/images/" % stack.ota_http_port
    url = base + sha
    lk.wait_until(lambda: _get(url, tok)[0] == 200, 15)  # the image list is re-read
    assert _get(url)[0] == 401
    assert _get(url, "nosuchtoken")[0] == 401
    assert _get(url, other_tok)[0] == 403  # a device of another model
    st, h, body = _get(url, tok)
    assert st == 200 and body == data and h["ETag"] == '"%s"' % sha
    # pieces, as `curl -r`, put together
    parts = b""
    for a in range(0, 70000, 30000):
        st, h, body = _get(url, tok, "bytes=%d-%d" % (a, min(a + 29999, 69999)))
        assert st == 206 and h["Content-Range"].startswith("bytes %d-" % a)
        parts += body
    assert hashlib.sha256(parts).hexdigest() == sha
    assert _get(url, tok, "bytes=70000-")[0] == 416
    st, h, body = _get(url, tok, method="HEAD")
    assert st == 200 and h["Content-Length"] == "70000" and body == b""
    st, h, body = _get(base + "httpm/1.0", tok, "bytes=-10")
    assert st == 206 and body == data[-10:]
    # signed URLs: as the offers carry them (ota_url_secret); tampered or expired: 401
    import hmac
    secret = stack.env["LATCHKEY_OTA_URL_SECRET"].encode()

    def signed(expires, dev=dev_id):
        mac = hmac.new(secret, ("%s:%s:%d" % (sha, dev, expires)).encode(),
                       hashlib.sha256).hexdigest()
        return "%s?device=%s&expires=%d&sig=%s" % (url, dev, expires, mac)
    good = signed(int(time.time()) + 60)
    assert _get(good, rng="bytes=0-9")[2] == data[:10]
    tampered = good[:-1] + ("0" if good[-1] != "0" else "1")
    assert _get(tampered)[0] == 401
    assert _get(signed(int(time.time()) - 1))[0] == 401


def test_rollout_from_a_device_list_and_start_time(stack, tmp_path):
    oh.image(stack, "lst", "2.0", 1000)
    devs = oh.devices(stack, "lst", 5, "lst", "1.0")
    f = tmp_path / "devices.txt"
    f.write_text("%s\n%s\n" % (devs[1][0], devs[3][0]))
    r = oh.create_rollout(stack, "--image", "lst/2.0", "--devices", str(f),
                          "--start", "2099-01-01T00:00:00Z", "--error-threshold", "10%")
    st = oh.status(stack, r)
    assert st["devices"] == 2 and st["state"] == "scheduled" and st["error_pct"] == 10
    time.sleep(1.5)  # not due: nothing offered
    assert oh.status(stack, r)["states"] == {"waiting": 2}
    # the same devices cannot join a second unfinished rollout; bad options are refused
    p = cli(stack, "ota", "rollout", "create", "--image", "lst/2.0", "--devices", str(f),
            check=False)
    assert p.returncode == 1 and "no device matches" in p.stderr
    for bad in (("--groups", "50,10"), ("--groups", "10,50"), ("--error-threshold", "x"),
                ("--success", "0")):
        assert cli(stack, "ota", "rollout", "create", "--image", "lst/2.0", "--target",
                   "model=lst", *bad, check=False).returncode == 2
    cli(stack, "ota", "rollout", "cancel", r)
