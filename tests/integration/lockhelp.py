"""lockhelp: helpers of the smart-lock tests (test_20_lock.py, test_21_login.py).

The `latchkey` CLI against the test stack, users with permanent MQTT accounts, locks and
bindings (through the CLI, or in bulk through psql + `latchkey lock sync`), and the history
events of a lock — from PostgreSQL when the history-writer runs, else from the
lock-arbiter's Redis outbox (the same events, not yet delivered).
"""

import json
import os
import subprocess

import lk


def cli(stack, *args, check=True, timeout=30):
    """Runs `latchkey <args>` with the stack's configuration; returns the CompletedProcess
    (text). check: raise on a non-zero exit with its output."""
    env = dict(stack.env)
    env["LATCHKEY_CONF"] = os.path.join(lk.ROOT, "supervise", "latchkey.conf")
    env["LATCHKEY_ROOT"] = lk.ROOT
    p = subprocess.run([os.path.join(stack.build, "bin", "latchkey")] + [str(a) for a in args],
                       env=env, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise AssertionError("latchkey %s: exit %d\n%s%s" % (" ".join(map(str, args)),
                                                          p.returncode, p.stdout, p.stderr))
    return p


def mqtt_account(stack, user, password="pw-" + "x" * 8):
    """A permanent MQTT account named like the lock user (so its confirmations count as
    that user's), allowed to publish and subscribe under /<lock>/..."""
    cli(stack, "passwd", user, password)
    cli(stack, "acl", "set", user, "/+/+", "both")
    return password


# lock -> (device username, password) printed by `latchkey lock add`
DEVICES = {}


def setup_lock(stack, lock, bindings, window=None, quorum=None):
    """lock add (with an optional window in seconds / quorum), user add and bind for each
    (user, role) of bindings. The device credential `lock add` prints is kept in
    DEVICES."""
    args = ["lock", "add"] + (["--window", window] if window else []) + \
        (["--quorum", quorum] if quorum else []) + [lock]
    out = cli(stack, *args).stdout
    kv = dict(line.split(" ", 2)[1:] for line in out.splitlines()
              if line.startswith("device username ") or line.startswith("device password "))
    if "username" in kv:
        DEVICES[lock] = (kv["username"], kv.get("password"))
    for user, role in bindings:
        cli(stack, "user", "add", user)
        cli(stack, "bind", user, lock, role)
    return DEVICES.get(lock)


def device(stack, lock, client_id=None, protocol=lk.MQTTv311, subscribe=True, will=True):
    """The lock's device, logged in with its credential: subscribed to its call topic
    (QoS 1), Last Will -2 on its state topic."""
    user, pw = DEVICES[lock]
    c = lk.paho_client(stack, client_id or "dev-" + lock, username=user, password=pw,
                       protocol=protocol,
                       will=dict(topic="/%s/statu" % lock, payload="-2", qos=1) if will else None)
    if subscribe:
        g = c.subscribe("/%s/call" % lock, 1)
        assert [getattr(x, "value", x) for x in g] == [1], g
    return c


_SUPER = {}


def superuser(stack, name, password="su-pw-secret"):
    """A permanent superuser account (observers of every lock's traffic)."""
    if name not in _SUPER:
        cli(stack, "passwd", name, password)
        cli(stack, "user", "superuser", name, "on")
        _SUPER[name] = password
    return name, _SUPER[name]


def events(stack, lock, kind=None):
    """The lock's history events as dicts {id, kind, lock, actor, time, details}, oldest
    first, from PostgreSQL (history-writer running) or the arbiter's outbox."""
    out = []
    if stack.has("history-writer"):
        rows = stack.psql("SELECT coalesce(json_agg(json_build_object('id', id, 'kind', kind, "
                          "'lock', lockno, 'actor', actor, 'details', details) ORDER BY time, "
                          "seq), '[]') FROM events WHERE lockno = '%s'" % lock.replace("'", "''"))
        out = json.loads(rows or "[]")
    else:
        vals = stack.redis_cli("HVALS", "lk:{arb}:outbox").splitlines()
        for v in vals:
            f = v.split("\x1f")
            if len(f) == 5 and f[1] == lock:
                out.append({"kind": f[0], "lock": f[1], "actor": f[2], "time": int(f[3]),
                            "details": json.loads(f[4])})
        out.sort(key=lambda e: e["time"])
    if kind:
        out = [e for e in out if e["kind"] == kind]
    return out


def decisions(stack, lock):
    return [e["details"] for e in events(stack, lock, "unlock_decision")]


def wait_decisions(stack, lock, pred, timeout=10):
    """Waits until pred(decisions) holds (history-writer may lag); returns them."""
    return lk.wait_until(lambda: (lambda d: pred(d) and d)(decisions(stack, lock)), timeout,
                         interval=0.1, what="decisions of %s" % lock)

