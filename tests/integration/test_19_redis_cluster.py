"""19: Redis Cluster as the state store (issue 17): a real 3-master, 3-replica cluster of
Debian's redis-server on free ports, and a stack of its own (no "redis" service) pointed at
it through LATCHKEY_REDIS_CLUSTER with redis_wait_replicas 1.

- Sessions, subscriptions, queued QoS 1 messages, retained messages and password users
  work with keys spread over the masters; one client's keys share a slot ({client} tag).
- A master is SIGKILLed while QoS 1 messages flow to persistent offline sessions; its
  replica is promoted; the killed node comes back as a replica. Every message the broker
  acknowledged (PUBACK) is then delivered: WAIT before the acks kept them on the replica.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid

import pytest

import lk
from lockhelp import cli, device, mqtt_account, setup_lock

RUN = uuid.uuid4().hex[:6]
NODE_TIMEOUT_MS = 1000
CLIENTS = 12
MESSAGES = int(os.environ.get("LATCHKEY_CLUSTER_MESSAGES", 600))


def free_cluster_port(used):
    """a port p with p and its cluster bus port p + 10000 free"""
    for _ in range(200):
        p = lk.free_port(used)
        if p + 10000 >= 65536 or p + 10000 in used:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + 10000))
            return p
        except OSError:
            continue
    raise RuntimeError("no free port pair")


class Cluster:
    """Six redis-server processes (cluster-enabled) in a temporary folder."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="lk-rcluster-", dir=os.environ.get("LATCHKEY_TEST_TMP"))
        used = set()
        self.ports = []
        for _ in range(6):
            p = free_cluster_port(used)
            used.update((p, p + 10000))
            self.ports.append(p)
        self.procs = {}

    def start_node(self, port):
        d = os.path.join(self.dir, str(port))
        os.makedirs(d, exist_ok=True)
        log = open(os.path.join(d, "redis.log"), "ab")
        self.procs[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", d,
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "",
             "--appendonly", "no", "--protected-mode", "no"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        lk.wait_until(lambda: self.cli(port, "PING", check=False) == "PONG", 10,
                      what="redis %d up" % port)

    def start(self):
        for p in self.ports:
            self.start_node(p)
        r = subprocess.run(["redis-cli", "--cluster", "create"]
                           + ["127.0.0.1:%d" % p for p in self.ports]
                           + ["--cluster-replicas", "1", "--cluster-yes"],
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stdout + r.stderr
        self.wait_ok(self.ports)
        # replicas in sync, else the first WAITs see 0 replicas
        lk.wait_until(lambda: all("master_link_status:up" in self.cli(p, "INFO", "replication")
                                  for p, n in self.nodes().items() if n[0] == "replica"),
                      60, interval=0.2, what="replicas in sync")

    def cli(self, port, *args, check=True, cluster=False):
        r = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port)]
                           + (["-c"] if cluster else []) + [str(a) for a in args],
                           capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise AssertionError("redis-cli %s: %s" % (args, r.stderr))
        return r.stdout.strip()

    def any_live(self):
        return next(p for p in self.ports if self.procs[p].poll() is None)

    def c(self, *args):
        """a command through any live node, following redirections"""
        return self.cli(self.any_live(), *args, cluster=True)

    def state_ok(self, port):
        info = self.cli(port, "CLUSTER", "INFO", check=False)
        return "cluster_state:ok" in info

    def wait_ok(self, ports, timeout=60):
        lk.wait_until(lambda: all(self.state_ok(p) for p in ports), timeout, interval=0.2,
                      what="cluster_state ok")

    def nodes(self):
        """port -> (role, master port or None, slots list of (lo, hi), flags)"""
        out = {}
        ids = {}
        lines = self.cli(self.any_live(), "CLUSTER", "NODES").splitlines()
        for ln in lines:
            f = ln.split()
            ids[f[0]] = int(f[1].split("@")[0].rsplit(":", 1)[1])
        for ln in lines:
            f = ln.split()
            port = ids[f[0]]
            role = "master" if "master" in f[2] else "replica"
            slots = []
            for s in f[8:]:
                if s.startswith("["):
                    continue
                lo, _, hi = s.partition("-")
                slots.append((int(lo), int(hi or lo)))
            out[port] = (role, ids.get(f[3]), slots, f[2])
        return out

    def master_of_slot(self, slot):
        for port, (role, _, slots, flags) in self.nodes().items():
            if role == "master" and "fail" not in flags and any(lo <= slot <= hi for lo, hi in slots):
                return port
        return None

    def keyslot(self, key):
        return int(self.cli(self.any_live(), "CLUSTER", "KEYSLOT", key))

    def kill(self, port):
        self.procs[port].send_signal(signal.SIGKILL)
        self.procs[port].wait(10)

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if not os.environ.get("LATCHKEY_KEEP_RUN"):
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        pytest.skip("redis-server / redis-cli not installed")
    c = Cluster()
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def cstack(cluster):
    if not all(lk.built(s) for s in lk.DAEMONS):
        pytest.skip("daemons not built")
    masters = sorted(p for p, n in cluster.nodes().items() if n[0] == "master")
    for attempt in range(2):
        s = lk.Stack(services=[x for x in lk.ALL_SERVICES if x != "redis"],
                     redis_cluster=" ".join("127.0.0.1:%d" % p for p in masters),
                     redis_wait_replicas=int(os.environ.get("LATCHKEY_CLUSTER_WAIT", 1)))
        s.env["LATCHKEY_REDIS_WAIT_TIMEOUT_MS"] = "1000"
        try:
            s.start_all()
            break
        except lk.StackError as e:
            # a port chosen free was taken before the stack bound it (the cluster's and
            # the other tests' connections use the same range): once more on new ports
            s.destroy()
            if attempt or "Address already in use" not in str(e):
                raise
    try:
        yield s
    finally:
        s.destroy()


def offline_session(stack, cid, topic):
    c = lk.paho_client(stack, cid, clean_session=False)
    c.subscribe(topic, qos=1)
    c.disconnect()


def collect(stack, cid, quiet=2.0, timeout=60, want=None):
    """reconnects cid's persistent session; the payloads it receives until quiet (or until
    every payload of want came)"""
    got = []
    c = lk.paho_client(stack, cid, clean_session=False)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and not (want and want <= set(got)):
            try:
                m = c.messages.get(timeout=quiet)
            except Exception:
                break
            got.append(m.payload.decode())
    finally:
        c.disconnect()
    return got


def test_sessions_and_keys_over_slots(cluster, cstack):
    cids = ["c19-%s-%d" % (RUN, i) for i in range(CLIENTS)]
    for i, cid in enumerate(cids):
        offline_session(cstack, cid, "t19/%s/%d" % (RUN, i))
    # one client's keys in one slot: the {client} tag
    for cid in cids:
        assert cluster.c("EXISTS", "lk:sess:{%s}" % cid) == "1", cid
        assert cluster.keyslot("lk:sess:{%s}" % cid) == cluster.keyslot("lk:q:{%s}" % cid) \
            == cluster.keyslot("lk:qseq:{%s}" % cid)
        assert cluster.c("SISMEMBER", "lk:sessions", cid) == "1"
    masters = {cluster.master_of_slot(cluster.keyslot(cid)) for cid in cids}
    assert len(masters) >= 2, "sessions all on one master: %s" % masters
    # queued while offline, delivered on reconnect, subscriptions kept across slots
    with lk.paho_client(cstack, "p19-%s" % RUN) as pub:
        for i in range(CLIENTS):
            pub.publish("t19/%s/%d" % (RUN, i), "hello-%d" % i, qos=1)
    for i, cid in enumerate(cids[:4]):
        assert collect(cstack, cid, quiet=1.0) == ["hello-%d" % i]


def test_retained_and_users(cluster, cstack):
    topics = ["r19/%s/%d" % (RUN, i) for i in range(5)]
    for t in topics:
        lk.mosquitto_pub(cstack, t, "kept " + t, qos=1, retain=True)
    assert cluster.c("HEXISTS", "lk:retain", topics[0]) == "1"
    got = lk.mosquitto_sub(cstack, "r19/%s/#" % RUN, count=5, timeout=15, qos=1)
    assert sorted(got) == sorted("kept " + t for t in topics)
    # a password user written by the CLI through the cluster, then checked by auth
    user = "u19%s" % RUN
    cli(cstack, "passwd", user, "pw19-secret")
    cli(cstack, "acl", "set", user, "u19/#", "both")
    c = lk.paho_client(cstack, "a19-%s" % RUN, username=user, password="pw19-secret")
    c.disconnect()
    with pytest.raises(Exception):
        lk.paho_client(cstack, "b19-%s" % RUN, username=user, password="wrong")


def test_lock_unlock_on_cluster(cluster, cstack):
    """the lock-arbiter's scripts run on the {arb} slot's master; the CLI's transactions
    (lock add, bind) span slots"""
    lock = "L19%s" % RUN
    users = []
    for u in ("alice", "bob"):
        name = "%s19%s" % (u, RUN)
        mqtt_account(cstack, name, "pw19-lock")
        users.append(name)
    setup_lock(cstack, lock, [(users[0], "m"), (users[1], "f")])
    assert cluster.c("HGET", "lk:{arb}:bind:" + lock, users[0]) == "m"
    dev = device(cstack, lock)
    try:
        a = lk.paho_client(cstack, "a19l-" + RUN, username=users[0], password="pw19-lock")
        b = lk.paho_client(cstack, "b19l-" + RUN, username=users[1], password="pw19-lock")
        a.publish("/%s/m" % lock, "1", qos=1)
        b.publish("/%s/f" % lock, "1", qos=1)
        m = dev.messages.get(timeout=10)
        assert (m.topic, m.payload) == ("/%s/call" % lock, b"unlock")
        dev.messages.expect_none(1.0)
        a.disconnect()
        b.disconnect()
    finally:
        dev.disconnect()
    # the mirror rebuilt from PostgreSQL: SCAN of every master, a transaction over slots
    cli(cstack, "lock", "sync")
    assert cluster.c("HGET", "lk:{arb}:bind:" + lock, users[1]) == "f"
    assert cluster.c("HGET", "lk:ubind:" + users[0], lock) == "m"


def test_slot_migration_ask_and_moved(cluster, cstack):
    """a slot moved by hand between masters while in use: a session created during the
    migration goes by ASK, one created before is found by MOVED afterwards"""
    tag = "m19" + RUN
    old, new = "%s{%s}old" % (tag, RUN), "%s{%s}new" % (tag, RUN)
    # '}' in a client id: every key of it still in one slot (the tag up to its first '}')
    slot = cluster.keyslot("lk:sess:{%s}" % old)
    assert slot == cluster.keyslot("lk:q:{%s}" % new)
    offline_session(cstack, old, "s19/%s/old" % RUN)
    with lk.paho_client(cstack, "ps19-" + RUN) as pub:
        pub.publish("s19/%s/old" % RUN, "before", qos=1)
    src = cluster.master_of_slot(slot)
    dst = next(p for p, n in cluster.nodes().items() if n[0] == "master" and p != src)
    src_id = cluster.cli(src, "CLUSTER", "MYID")
    dst_id = cluster.cli(dst, "CLUSTER", "MYID")
    assert cluster.cli(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id) == "OK"
    assert cluster.cli(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id) == "OK"
    # keys absent from the source: ASK to the destination
    offline_session(cstack, new, "s19/%s/new" % RUN)
    with lk.paho_client(cstack, "ps19b-" + RUN) as pub:
        pub.publish("s19/%s/new" % RUN, "during", qos=1)
        pub.publish("s19/%s/old" % RUN, "during", qos=1)
    # move the rest and hand the slot over
    keys = cluster.cli(src, "CLUSTER", "GETKEYSINSLOT", slot, 1000).split()
    assert keys, "the old session's keys should still be on the source"
    r = cluster.cli(src, "MIGRATE", "127.0.0.1", dst, "", 0, 5000, "KEYS", *keys)
    assert r in ("OK", "NOKEY"), r
    for p, n in cluster.nodes().items():
        if n[0] == "master":
            cluster.cli(p, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    lk.wait_until(lambda: cluster.master_of_slot(slot) == dst, 20, interval=0.2,
                  what="slot %d at its new master" % slot)
    # Latchkey's map still names the source: MOVED
    assert collect(cstack, old, quiet=1.5) == ["before", "during"]
    assert collect(cstack, new, quiet=1.5) == ["during"]
    assert "redis: slot %d moved to 127.0.0.1:%d" % (slot, dst) in cstack.log("session-store")


def test_master_killed_under_load(cluster, cstack):
    cids = ["k19-%s-%d" % (RUN, i) for i in range(CLIENTS)]
    for i, cid in enumerate(cids):
        offline_session(cstack, cid, "k19/%s/%d" % (RUN, i))
    # the master holding the most of these sessions dies
    by_master = {}
    for cid in cids:
        by_master.setdefault(cluster.master_of_slot(cluster.keyslot(cid)), []).append(cid)
    victim = max(by_master, key=lambda m: len(by_master[m]))
    replica = next(p for p, n in cluster.nodes().items() if n[1] == victim)

    acked_mids = set()
    sent = {}
    lock = threading.Lock()
    pub = lk.paho_client(cstack, "kp19-%s" % RUN)

    def on_publish(client, userdata, mid):
        # paho calls this holding its own locks: no publish() under our lock
        with lock:
            acked_mids.add(mid)

    def n_acked():
        with lock:
            return len(acked_mids)

    pub.paho.on_publish = on_publish
    times = {}
    errors = []

    def failover():
        # The replica is cut off from its master (stopped, its link closed by the master)
        # for a while before the master dies, so the master's last writes never reach it:
        # acknowledged without WAIT they would be lost. Then it is promoted, and the killed
        # node comes back as its replica (until then WAIT 1 cannot succeed on that shard).
        try:
            cluster.procs[replica].send_signal(signal.SIGSTOP)
            cluster.cli(victim, "CLIENT", "KILL", "TYPE", "replica")
            time.sleep(0.7)
            cluster.kill(victim)
            times["killed"] = time.time()
            cluster.procs[replica].send_signal(signal.SIGCONT)
            lk.wait_until(lambda: cluster.nodes()[replica][0] == "master", 30, interval=0.1,
                          what="replica promoted")
            times["promoted"] = time.time()
            cluster.start_node(victim)
            lk.wait_until(lambda: cluster.nodes()[victim][0] == "replica", 30, interval=0.1,
                          what="old master back as a replica")
            times["back"] = time.time()
        except Exception as e:  # reported by the main thread
            errors.append(e)
        finally:
            if cluster.procs[replica].poll() is None:
                cluster.procs[replica].send_signal(signal.SIGCONT)

    fo = threading.Thread(target=failover)
    t0 = time.time()
    # at least MESSAGES, and on until the failover is over (the last ones after it)
    n = 0
    while n < MESSAGES or (fo.is_alive() and time.time() - t0 < 120):
        i = n % CLIENTS
        payload = "%d:%d" % (i, n)
        info = pub.publish("k19/%s/%d" % (RUN, i), payload, qos=1, wait=False)
        sent[info.mid] = payload
        if n == MESSAGES // 3:
            fo.start()
        # a small window, so the kill lands among unacknowledged messages
        while n + 1 - n_acked() > 20 and time.time() - t0 < 180:
            time.sleep(0.002)
        n += 1
    total = n
    fo.join(70)
    assert not errors, errors
    cluster.wait_ok(cluster.ports)
    lk.wait_until(lambda: n_acked() == total, 90, interval=0.2,
                  what="every publish acknowledged")
    pub.disconnect()
    with lock:
        acked = {sent[m] for m in acked_mids}
    print("master %d killed; replica %d promoted after %.1f s, old master back as replica "
          "after %.1f s; %d/%d acknowledged in %.1f s"
          % (victim, replica, times["promoted"] - times["killed"], times["back"] - times["killed"],
             len(acked), total, time.time() - t0))

    lost = []
    for i, cid in enumerate(cids):
        want = {p for p in acked if p.startswith("%d:" % i)}
        got = set(collect(cstack, cid, quiet=3.0, want=want))
        lost += sorted(want - got)
    assert not lost, "acknowledged but lost: %d, e.g. %s" % (len(lost), lost[:10])
    # the session store did meet the dead master (the kill was on its path)
    log = cstack.log("session-store")
    assert "127.0.0.1:%d" % victim in log, "the session store never used the killed master"
