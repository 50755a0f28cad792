"""ota-distributor's rollouts against the real stack and a fleet of simulated devices
(tests/ota_sim.py): groups that advance on the success share, the limit on concurrent
downloads and the byte cap, the pause at the failure threshold (a badly signed image),
a kill of ota-distributor in the middle of the downloads, both device protocols, and the
history events — each device's states once each."""
import json
import time

import pytest

import lk
from lockhelp import cli
import otahelp as oh


@pytest.fixture(autouse=True)
def need(stack):
    stack.require("ota-distributor", "auth", "router", "mqtt-frontend-1", "postgres")


def _events_once(stack, rollout, devs, states):
    ev = oh.device_events(stack, rollout)
    for dev, st, n in ev:
        assert n == "1", "device %s state %s: %s events" % (dev, st, n)
    for dev, _ in devs:
        mine = {st for d, st, _ in ev if d == dev}
        assert set(states) <= mine, (dev, mine)


def test_thingsboard_staged_rollout(stack):
    oh.image(stack, "tbm", "2.0", 100000)
    devs = oh.devices(stack, "tbr", 30, "tbm", "1.0")
    r = oh.create_rollout(stack, "--image", "tbm/2.0", "--target", "model=tbm,version<2.0",
                          "--groups", "10,50,100", "--success", "90", "--error-threshold", "20%",
                          "--max-concurrent", "5")
    results, summary = oh.run_sim(stack, devs, "tbm", timeout=120)
    assert summary["summary"] == {"updated": 30}, results
    st = oh.wait_state(stack, r, ("done",))
    assert st["states"] == {"updated": 30}
    assert [g["devices"] for g in st["per_group"]] == [3, 12, 15]
    _events_once(stack, r, devs, ("offered", "downloading", "downloaded", "updated"))
    assert oh.max_concurrent_seen(stack, r) <= 5
    # the groups advanced in order, each once, then done
    rows = stack.psql("SELECT details->>'state', details->>'group' FROM ota_events WHERE kind = "
                      "'ota_rollout' AND rollout = %s ORDER BY seq" % r).splitlines()
    assert rows == ["scheduled|0", "running|0", "running|1", "running|2", "done|2"], rows
    devices = json.loads(cli(stack, "ota", "devices", "--model", "tbm", "--json").stdout)
    assert {d["version"] for d in devices} == {"2.0"}


def test_failure_threshold_pauses_with_reason(stack):
    # signed with another key: every device's signature check fails
    oh.image(stack, "thm", "2.0", 20000, key="rogue")
    devs = oh.devices(stack, "thr", 20, "thm", "1.0")
    r = oh.create_rollout(stack, "--image", "thm/2.0", "--target", "model=thm",
                          "--groups", "10,50,100", "--success", "90", "--error-threshold", "2")
    results, summary = oh.run_sim(stack, devs, "thm", timeout=25)
    failed = [d for d, j in results.items() if j["result"] == "failed"]
    assert len(failed) == 2 and all("signature" in results[d]["error"] for d in failed)
    st = oh.wait_state(stack, r, ("paused",))
    assert "failure threshold" in st["reason"], st
    assert st["states"] == {"failed": 2, "waiting": 18}, st  # nobody else was offered
    ev = stack.psql("SELECT details->>'error' FROM ota_events WHERE rollout = %s AND state = "
                    "'failed'" % r).splitlines()
    assert len(ev) == 2 and all("signature" in e for e in ev)
    cli(stack, "ota", "rollout", "resume", r)
    assert oh.status(stack, r)["state"] == "running"
    time.sleep(2)  # the failures before the resume do not pause it again
    assert oh.status(stack, r)["state"] == "running"
    cli(stack, "ota", "rollout", "cancel", r)
    st = oh.status(stack, r)
    assert st["state"] == "cancelled" and st["states"] == {"failed": 2, "cancelled": 18}


def test_kill_mid_download_every_device_finishes(stack):
    size = 200000
    oh.image(stack, "kim", "2.0", size)
    devs = oh.devices(stack, "kil", 10, "kim", "1.0")
    rate = 250000
    r = oh.create_rollout(stack, "--image", "kim/2.0", "--target", "model=kim",
                          "--max-bytes-per-sec", str(rate))
    t0 = time.monotonic()
    p = oh.run_sim(stack, devs, "kim", timeout=120, args=("--retry", "2"), wait=False)
    lk.wait_until(lambda: int(stack.psql("SELECT count(*) FROM ota_rollout_devices WHERE "
                                         "rollout_id = %s AND bytes_offset > 0" % r)) >= 3, 30)
    stack.kill("ota-distributor")
    results, summary = oh.sim_result(p, 120)
    elapsed = time.monotonic() - t0
    assert summary["summary"] == {"updated": 10}, results
    # the byte cap held: 2 MB at 250 kB/s take about 8 s (a burst of 0.1 s allowed)
    assert elapsed >= 10 * size / rate * 0.8, elapsed
    st = oh.wait_state(stack, r, ("done",))
    assert st["states"] == {"updated": 10}
    _events_once(stack, r, devs, ("offered", "downloading", "downloaded", "updated"))


def test_latchkey_protocol_v5_and_v311_with_faults(stack):
    oh.image(stack, "lkp", "1.1", 50000)
    devs5 = oh.devices(stack, "lk5", 6, "lkp", "1.0", protocol="lk")
    devs3 = oh.devices(stack, "lk3", 6, "lkp", "1.0", protocol="lk")
    r = oh.create_rollout(stack, "--image", "lkp/1.1", "--target", "model=lkp",
                          "--error-threshold", "50%", "--max-concurrent", "4")
    p5 = oh.run_sim(stack, devs5, "lkp", protocol="lk", timeout=90, wait=False,
                    args=("--corrupt", "lk5000", "--drop", "lk5001", "--old", "lk5002"))
    p3 = oh.run_sim(stack, devs3, "lkp", protocol="lk", timeout=90, wait=False,
                    args=("--v311", "--refuse", "lk3000", "--drop", "lk3001"))
    r5, _ = oh.sim_result(p5, 90)
    r3, _ = oh.sim_result(p3, 90)
    assert r5["lk5000"]["result"] == "failed" and "checksum" in r5["lk5000"]["error"]
    assert r5["lk5001"]["result"] == "updated"  # dropped mid-download, resumed
    assert r3["lk3001"]["result"] == "updated"
    assert r3["lk3000"]["result"] == "failed"
    st = oh.wait_state(stack, r, ("done",))
    # the device that came back with its old version failed: success is the version
    assert st["states"] == {"updated": 9, "failed": 3}, st
    err = stack.psql("SELECT error FROM ota_rollout_devices WHERE rollout_id = %s AND "
                     "device_id = 'lk5002'" % r)
    assert "runs 1.0 after the update to 1.1" in err
    assert oh.max_concurrent_seen(stack, r) <= 4


def test_two_replicas_share_the_store(stack):
    """a second ota-distributor on the same bus and PostgreSQL: requests are split between
    the two (shared subscription), the rollout still moves each device once"""
    import os
    import signal
    import subprocess
    oh.image(stack, "rep", "2.0", 200000)
    devs = oh.devices(stack, "rep", 12, "rep", "1.0")
    env = dict(stack.env)
    env.update({"LATCHKEY_ROOT": lk.ROOT, "LATCHKEY_OTA_HTTP_PORT": "0"})
    log = open(os.path.join(stack.run_dir, "ota-2.log"), "w")
    second = subprocess.Popen([os.path.join(stack.build, "bin", "ota-distributor"), "-c",
                               os.path.join(lk.ROOT, "supervise", "latchkey.conf"), "-n", "ota-2"],
                              env=env, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)
    try:
        lk.wait_until(lambda: "ready" in open(log.name).read(), 30)
        r = oh.create_rollout(stack, "--image", "rep/2.0", "--target", "model=rep",
                              "--groups", "50,100", "--success", "100")
        results, summary = oh.run_sim(stack, devs, "rep", timeout=90, args=("--chunk", "8192"))
        assert summary["summary"] == {"updated": 12}, results
        st = oh.wait_state(stack, r, ("done",))
        assert st["states"] == {"updated": 12}
        _events_once(stack, r, devs, ("offered", "downloading", "downloaded", "updated"))
        assert len(stack.psql("SELECT id FROM ota_events WHERE kind = 'ota_rollout' AND "
                              "rollout = %s" % r).splitlines()) == 4  # scheduled, running, +1, done
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=20)
        log.close()
    text = open(log.name).read()
    served = int(text.split(" chunks,")[0].split()[-1])
    assert served > 0, text[-2000:]
