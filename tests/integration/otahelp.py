"""Helpers of the OTA tests (test_60_ota*): images, devices, the device simulator."""
import json
import os
import subprocess
import tempfile
import time

import lk
from lockhelp import cli

SIM = os.path.join(lk.ROOT, "tests", "ota_sim.py")
_KEYS = {}


def keydir(stack, name="main"):
    """a folder with an Ed25519 key pair made by `latchkey ota keygen` (one per name)"""
    if name not in _KEYS:
        d = tempfile.mkdtemp(prefix="lk-ota-keys-")
        cli(stack, "ota", "keygen", d)
        _KEYS[name] = d
    return _KEYS[name]


def image(stack, model, version, size, key="main", seed=None):
    """registers size random bytes as model/version; returns (bytes, sha256 hex)"""
    import hashlib
    data = os.urandom(size) if seed is None else (seed * (size // len(seed) + 1))[:size]
    f = tempfile.NamedTemporaryFile(delete=False, suffix=".bin")
    f.write(data)
    f.close()
    try:
        cli(stack, "ota", "add", "--model", model, "--version", version, "--key",
            os.path.join(keydir(stack, key), "ota.key"), f.name)
    finally:
        os.unlink(f.name)
    return data, hashlib.sha256(data).hexdigest()


def devices(stack, prefix, n, model, version="1.0", protocol="tb"):
    """registers n devices; returns [(id, token)]"""
    out = []
    for i in range(n):
        dev, tok = "%s%03d" % (prefix, i), "tok-%s%03d" % (prefix, i)
        cli(stack, "ota", "device", "add", dev, "--model", model, "--version", version,
            "--token", tok, "--protocol", protocol)
        out.append((dev, tok))
    return out


def run_sim(stack, devs, model, version="1.0", protocol="tb", timeout=90, args=(), wait=True):
    """runs tests/ota_sim.py for devs; returns {device: result line} and the summary (or the
    Popen when wait is False)"""
    f = tempfile.NamedTemporaryFile("w", delete=False, suffix=".txt")
    for dev, tok in devs:
        f.write("%s %s %s %s\n" % (dev, tok, model, version))
    f.close()
    cmd = ["/usr/bin/python3", SIM, "--port", str(stack.mqtt_port), "--protocol", protocol,
           "--devices", f.name, "--timeout", str(timeout),
           "--pubkey", os.path.join(keydir(stack), "ota.pub")] + list(args)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return p
    return sim_result(p, timeout)


def sim_result(p, timeout):
    out, err = p.communicate(timeout=timeout + 60)
    results, summary = {}, None
    for line in out.splitlines():
        j = json.loads(line)
        if "summary" in j:
            summary = j
        else:
            results[j["device"]] = j
    assert summary is not None, "simulator output:\n%s\n%s" % (out, err)
    return results, summary


def status(stack, rollout):
    return json.loads(cli(stack, "ota", "rollout", "status", rollout, "--json").stdout)


def create_rollout(stack, *args):
    out = cli(stack, "ota", "rollout", "create", *args).stdout
    return out.split()[1].rstrip(":")


def wait_state(stack, rollout, states, timeout=60):
    return lk.wait_until(lambda: status(stack, rollout)["state"] in states and
                         status(stack, rollout), timeout, interval=0.3,
                         what="rollout %s in %s" % (rollout, states))


def device_events(stack, rollout):
    """[(device, state, count)] of the rollout's device events"""
    rows = stack.psql("SELECT device, state, count(*) FROM ota_events WHERE kind = 'ota_device' "
                      "AND rollout = %d GROUP BY device, state ORDER BY 1, 2" % int(rollout))
    return [tuple(r.split("|")) for r in rows.splitlines() if r]


def max_concurrent_seen(stack, rollout):
    """the most devices holding a download slot (offered, not yet downloaded or done) at
    once, rebuilt from the events"""
    rows = stack.psql("SELECT device, state FROM ota_events WHERE kind = 'ota_device' AND "
                      "rollout = %d ORDER BY seq" % int(rollout))
    holding, most = set(), 0
    for r in rows.splitlines():
        dev, st = r.split("|")
        if st == "offered":
            holding.add(dev)
        elif st in ("downloaded", "updated", "failed", "cancelled"):
            holding.discard(dev)
        most = max(most, len(holding))
    return most


def now():
    return time.monotonic()
