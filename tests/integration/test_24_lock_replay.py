"""24: replay that reproduces (issue 13).

An unlock round is recorded in the session stack (msglog_dir is always set there): the
lock-arbiter's log holds the confirmations it was handed and, before each, a LockSnapshot of
what the decision depended on (the temporary login's user, the lock's bindings, window and
quorum, the open round). `latchkey log replay -D` into a second, fresh stack rebuilds that
state in the second stack's Redis and publishes the confirmations again through its router:
its arbiter must take the same decisions. No credential is issued there (LoginRequests are
never replayed) and the first stack sees nothing of the replay.
"""

import glob
import json
import os
import time
import uuid

import pytest

import lk
from lockhelp import cli, decisions, device, mqtt_account, setup_lock

RUN = uuid.uuid4().hex[:6]
PW = "replay-pw-secret"


def _summary(ds):
    return [(d["decision"], sorted((c["role"], c["user"]) for c in d.get("confirmations", [])),
             d.get("user"), d.get("role"), d.get("reason")) for d in ds]


def test_recorded_round_replays_to_the_same_decisions(stack):
    stack.require("lock-arbiter", "router", "mqtt-frontend-1", "session-store", "auth",
                  "history-writer")
    lock = "RP" + RUN
    al, bo = "ral-" + RUN, "rbo-" + RUN
    mqtt_account(stack, bo, PW)
    setup_lock(stack, lock, [(al, "m"), (al, "f"), (bo, "f")], window="1")
    # alice through a temporary login (the mapping is part of what is replayed)
    out = cli(stack, "login", al).stdout
    cred = dict(line.split(" ", 1) for line in out.strip().splitlines())
    dev = device(stack, lock)
    a = lk.paho_client(stack, "ra-" + RUN, username=cred["username"], password=cred["password"])
    b = lk.paho_client(stack, "rb-" + RUN, username=bo, password=PW)
    a.publish("/%s/m" % lock, "1", qos=1)           # granted with bob
    b.publish("/%s/f" % lock, "1", qos=1)
    assert dev.messages.get(timeout=10).payload == b"unlock"
    a.publish("/%s/m" % lock, "1", qos=1)           # alice again, then as f: refused
    a.publish("/%s/f" % lock, "1", qos=1)
    time.sleep(2.0)                                  # the round expires (1 s window)
    b.publish("/%s/f" % lock, "1", qos=1)           # granted again, the other way round
    a.publish("/%s/m" % lock, "1", qos=1)
    assert dev.messages.get(timeout=10).payload == b"unlock"
    want = lk.wait_until(lambda: (lambda d: len(d) >= 4 and d)(decisions(stack, lock)), 15,
                         what="the recorded decisions")
    assert [d["decision"] for d in want] == ["granted", "refused", "expired", "granted"], want
    for c in (a, b, dev):
        c.disconnect()
    n_before = len(decisions(stack, lock))
    time.sleep(0.5)                                  # the arbiter's log is flushed each turn
    segs = sorted(glob.glob(os.path.join(stack.run_dir, "msglog", "lock-arbiter-*.lkm")))
    assert segs
    dumped = cli(stack, "log", "dump", "-t", "lock_snapshot", *segs).stdout
    snaps = [json.loads(x)["envelope"]["lock_snapshot"] for x in dumped.splitlines()]
    mine = [s for s in snaps if s["lock"] == lock]
    assert mine and any(s.get("user") == al and s.get("login") == cred["username"] for s in mine)
    assert '"hello"' not in cli(stack, "log", "dump", *segs[-1:]).stdout

    second = lk.Stack()
    try:
        second.start_all()
        second.require("lock-arbiter", "router", "session-store", "history-writer")
        p = cli(second, "log", "replay", "-D", "-l", lock, "-e",
                "ipc://%s/ipc/router.ipc" % second.run_dir, *segs, timeout=120)
        assert "replayed" in p.stdout
        got = lk.wait_until(lambda: (lambda d: len(d) >= 4 and d)(decisions(second, lock)), 20,
                            what="the replayed decisions")
        assert _summary(got) == _summary(want)
        # no credential was issued in the test stack, none in production either
        assert second.redis_cli("KEYS", "mqtt_user:tmp-*") == ""
        assert len(decisions(stack, lock)) == n_before
    finally:
        second.destroy()
