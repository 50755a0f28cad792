"""08: the message log. Every service records the envelopes it receives (msglog_dir);
`latchkey log dump` prints them as JSON lines and `latchkey log replay` sends them to a
service again — here the router, whose replayed publishes reach a live subscriber."""
import glob
import json
import os
import subprocess

import pytest

import lk


@pytest.fixture(autouse=True)
def _need(stack):
    stack.require("router", "session-store", "auth", "mqtt-frontend-1", "mqtt-frontend-2")


def cli(stack, *args, timeout=30):
    exe = os.path.join(stack.build, "bin", "latchkey")
    return subprocess.run([exe] + list(args), capture_output=True, text=True, timeout=timeout,
                          env=stack.env)


def test_dump_and_replay(stack):
    with lk.paho_client(stack, "ml-sub") as sub:
        sub.subscribe("ml/+", 1)
        lk.mosquitto_pub(stack, "ml/a", "recorded-1", qos=1)
        lk.mosquitto_pub(stack, "ml/a", "recorded-2", qos=1)
        assert [m.text for m in sub.wait_for(2)] == ["recorded-1", "recorded-2"]

        segs = sorted(glob.glob(os.path.join(stack.run_dir, "msglog", "router-*.lkm")))
        assert segs, "the router wrote no message log"
        p = cli(stack, "log", "dump", *segs)
        assert p.returncode == 0, p.stderr
        lines = [json.loads(line) for line in p.stdout.splitlines()]
        pubs = [ln for ln in lines if ln["envelope"] and "publish" in ln["envelope"]
                and any(i["msg"].get("payload", "").startswith("recorded-")
                        for i in ln["envelope"]["publish"]["items"])]
        assert pubs, "no recorded publish in the dump"
        assert all(ln["peer"].startswith("fe-") for ln in pubs)

        # replay the recorded publishes (only: -b), as fast as possible
        r = cli(stack, "log", "replay", "-e", "ipc://%s/ipc/router.ipc" % stack.run_dir,
                "-b", "publish", "-s", "0", *segs, timeout=60)
        assert r.returncode == 0, r.stderr
        again = [m.text for m in sub.messages.drain(1.0, timeout=10)]
        assert again.count("recorded-1") >= 1 and again.count("recorded-2") >= 1
