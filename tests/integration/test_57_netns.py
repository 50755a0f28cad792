"""57: many hosts: the services spread over network namespaces, the bus over tcp:// with
CurveZMQ, and partitions (issue 17).

The test makes four namespaces (`ip netns`): a hub with a bridge, and three "hosts" tied
to it by veth pairs, addresses in 10.231.0.0/16 (127.0.0.1 carries no bus traffic):
  lk57f-*  frontends fe-1 (10.231.1.1) and fe-2 (10.231.1.2), and the test's MQTT clients
  lk57r-*  the router(s): 10.231.2.1 ..
  lk57s-*  session store(s) .1.., auth .11.., lock-arbiter .21.., history-writer .31..,
           Redis and PostgreSQL on 10.231.3.100 (latchkey-up LATCHKEY_SERVICES="redis
           postgres", REDIS_BIND / PG_LISTEN)
The replica counts come from LATCHKEY_TEST_REPLICAS (replhelp; default two routers, session
stores, auth, lock arbiters and history writers; router=1 session-store=1 gives one of
each, as a single host runs them). Node names resolve through
/etc/netns/<ns>/hosts (`ip netns exec` mounts it over /etc/hosts); endpoints are tcp://<node>:<port> (tcp://%n:<port> for
replicas), one configuration for every process: a server binds the address its name
resolves to (lk_bus_bind), its clients connect to the name. Certificates: `latchkey
keygen`, the frontends sharing mqtt-frontend's (frontend_curve_server_key). The daemons
run directly (no s6): started with `ip netns exec`, ready when they write to their -r fd;
their logs, each line stamped with the test's monotonic clock, in <run>/log/<node>.log
(LATCHKEY_KEEP_RUN=1 keeps them, LK57_LOG_LEVEL=info says more).

MQTT clients run inside the frontends' namespace (threads switched there with setns(2)):
paho for the QoS 1 load and the CONNECT probe, mosquitto_pub/sub through `ip netns exec`.

Partitions: one namespace's veth is set down at the hub for CUT_S seconds, then up. What
docs/architecture.md promises and is checked, for each of the router, the stores and the
frontends cut off:
- nothing published during the cut is acknowledged before it ends (the PUBACK waits for
  the router and, for persistent subscribers, the session store: "Degraded services");
- CONNECTs tried during the cut get CONNACK 0 once it ends (it is shorter than
  request_timeout_ms);
- the clients connected through the cut stay connected and are served again, within
  RESUME_S (5 s; measured 0.5-1.2 s) of its end;
- no acknowledged QoS 1 message is lost.

Every namespace, veth, bridge, hosts file and process made here is removed at the end,
also when a test fails. Skipped only when not root or without `ip`.
"""

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid

import pytest

import lk
import replhelp

RUN = uuid.uuid4().hex[:6]
CUT_S = float(os.environ.get("LATCHKEY_NETNS_CUT_S", 3.0))
RESUME_S = float(os.environ.get("LATCHKEY_NETNS_RESUME_S", 5.0))
TAG = "%x" % os.getpid()
PREFIX = "lk57"
NS_ROLES = ("f", "r", "s")   # frontends, routers, stores
PORTS = {"router": 5550, "session-store": 5551, "auth": 5552, "history-writer": 5553,
         "lock-arbiter": 5554}
# the configuration prefix of each kind (<prefix>_endpoint, <prefix>_replicas)
KEY = {kind: lk.REPLICA_PREFIX[kind] for kind in PORTS}
BASE = {"router": ("r", 1), "session-store": ("s", 1), "auth": ("s", 11),
        "lock-arbiter": ("s", 21), "history-writer": ("s", 31)}
SUBNET = {"f": 1, "r": 2, "s": 3}
DB_IP = "10.231.3.100"
FE = {"fe-1": "10.231.1.1", "fe-2": "10.231.1.2"}

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def ns_name(role):
    return "%s%s-%s" % (PREFIX, role, TAG)


def sh(*args, check=True, timeout=30, **kw):
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL, **kw)
    if check and p.returncode != 0:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(args), p.returncode, p.stderr.strip()))
    return p.stdout


@contextlib.contextmanager
def in_netns(name):
    """the calling thread in namespace `name` (threads it starts meanwhile stay there)"""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open("/run/netns/" + name, os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, "setns %s: %s" % (name, os.strerror(e)))
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back failed")
    finally:
        os.close(own)
        os.close(target)


def _stale_cleanup():
    """namespaces (and hosts folders) of earlier runs whose process is gone"""
    try:
        names = [ln.split()[0] for ln in sh("ip", "netns", "list").splitlines() if ln.strip()]
    except Exception:
        return
    for n in names:
        if not n.startswith(PREFIX) or "-" not in n:
            continue
        try:
            pid = int(n.rsplit("-", 1)[1], 16)
        except ValueError:
            continue
        if not os.path.exists("/proc/%d" % pid):
            sh("ip", "netns", "del", n, check=False)
            shutil.rmtree("/etc/netns/" + n, ignore_errors=True)


def nodes_of(replicas):
    """{node: (namespace role, address)} of every Latchkey server node"""
    out = {}
    for kind, (role, first) in BASE.items():
        names = lk.replica_names(kind, replicas.get(kind, 1))
        for i, n in enumerate(names):
            out[n] = (role, "10.231.%d.%d" % (SUBNET[role], first + i))
    for n, ip in FE.items():
        out[n] = ("f", ip)
    return out


class Net:
    """the namespaces, bridge and veths; remove() takes everything down"""

    def __init__(self, nodes):
        self.made = []
        self.hosts_dirs = []
        self.hub = ns_name("h")
        try:
            self._make(nodes)
        except Exception:
            self.remove()
            raise

    def _make(self, nodes):
        for role in ("h",) + NS_ROLES:
            sh("ip", "netns", "add", ns_name(role))
            self.made.append(ns_name(role))
            sh("ip", "-n", ns_name(role), "link", "set", "lo", "up")
        sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.hub, "link", "set", "br0", "up")
        for role in NS_ROLES:
            ns = ns_name(role)
            sh("ip", "-n", self.hub, "link", "add", "name", "ve-" + role, "type", "veth",
               "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", self.hub, "link", "set", "ve-" + role, "master", "br0")
            sh("ip", "-n", self.hub, "link", "set", "ve-" + role, "up")
            addrs = [ip for n, (r, ip) in nodes.items() if r == role]
            if role == "s":
                addrs.append(DB_IP)
            for ip in addrs:
                sh("ip", "-n", ns, "addr", "add", ip + "/16", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        hosts = "127.0.0.1 localhost\n" + "".join(
            "%s %s\n" % (ip, n) for n, (_, ip) in sorted(nodes.items()))
        for role in NS_ROLES:
            d = "/etc/netns/" + ns_name(role)
            os.makedirs(d, exist_ok=True)
            self.hosts_dirs.append(d)
            with open(os.path.join(d, "hosts"), "w") as f:
                f.write(hosts)

    def cut(self, role):
        sh("ip", "-n", self.hub, "link", "set", "ve-" + role, "down")

    def restore(self, role):
        sh("ip", "-n", self.hub, "link", "set", "ve-" + role, "up")

    def remove(self):
        for ns in reversed(self.made):
            sh("ip", "netns", "del", ns, check=False)
        self.made = []
        for d in self.hosts_dirs:
            shutil.rmtree(d, ignore_errors=True)
        try:
            os.rmdir("/etc/netns")
        except OSError:
            pass
        self.hosts_dirs = []


def write_config(path, run_dir, keys, replicas):
    def ep(kind):
        n = replicas.get(kind, 1)
        host = "%n" if n > 1 else kind
        return "tcp://%s:%d" % (host, PORTS[kind])

    with open(path, "w") as f:
        f.write("# test_57: the bus over tcp:// between namespaces, CurveZMQ\n")
        for kind, key in KEY.items():
            f.write("%s_endpoint %s\n" % (key, ep(kind)))
            f.write("%s_replicas %d\n" % (key, replicas.get(kind, 1)))
        f.write("frontend_curve_server_key mqtt-frontend\n"
                "bus_curve_secret ${LK_CURVE_SECRET}\n"
                "bus_curve_public_dir %s\n"
                "bus_curve_server_dir %s\n"
                "listener 1883 10.231.1.1\n"
                "allow_anonymous true\n"
                "redis_host %s\nredis_port 6379\n"
                "pg_conninfo host=%s port=5432 dbname=latchkey user=postgres\n"
                "sql_dir %s\n"
                "spool_dir %s/spool\n"
                "log_level ${LK57_LOG_LEVEL}\n"
                "max_inflight_messages 20\nmax_queued_messages 1000\n"
                "persistent_client_expiration 0\n"
                "lock_roles m f\nlock_quorum 2\nlock_window 35\n"
                % (keys, keys, DB_IP, DB_IP, os.path.join(lk.ROOT, "sql"), run_dir))


class Cluster:
    """Redis + PostgreSQL (latchkey-up in the stores' namespace) and every daemon"""

    def __init__(self, net, nodes, replicas, build):
        self.net, self.nodes, self.replicas, self.build = net, nodes, replicas, build
        self.run_dir = tempfile.mkdtemp(prefix="lk57-", dir=os.environ.get("LATCHKEY_TEST_TMP"))
        os.chmod(self.run_dir, 0o755)
        self.keys = os.path.join(self.run_dir, "keys")
        self.conf = os.path.join(self.run_dir, "latchkey.conf")
        self.procs = {}
        self.logs = {}
        self.servers_up = False
        self.srv_env = None

    def bin(self, name):
        return os.path.join(self.build, "bin", name)

    def start(self):
        os.makedirs(self.keys)
        sh(self.bin("latchkey"), "keygen", self.keys, "mqtt-frontend", *sorted(self.nodes))
        write_config(self.conf, self.run_dir, self.keys, self.replicas)
        os.makedirs(os.path.join(self.run_dir, "log"))
        # Redis and PostgreSQL: s6 in the stores' namespace, on DB_IP too
        srv_run = os.path.join(self.run_dir, "srv")
        os.makedirs(srv_run)
        os.chmod(srv_run, 0o755)
        env = dict(os.environ)
        for k in ("LATCHKEY_CONF", "LATCHKEY_ROOT", "LATCHKEY_REPLICAS"):
            env.pop(k, None)
        env.update({"RUN_DIR": srv_run, "LATCHKEY_SERVICES": "redis postgres",
                    "REDIS_PORT": "6379", "PG_PORT": "5432", "LATCHKEY_UP_TIMEOUT": "60",
                    "REDIS_BIND": "127.0.0.1 " + DB_IP,
                    "REDIS_PROTECTED_MODE": "no", "PG_LISTEN": "127.0.0.1," + DB_IP,
                    "BUILD": self.build})
        self.srv_env = env
        p = subprocess.run(["ip", "netns", "exec", ns_name("s"),
                            os.path.join(lk.ROOT, "supervise", "latchkey-up"), "--detach"],
                           env=env, cwd=lk.ROOT, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=120)
        if p.returncode != 0:
            raise RuntimeError("latchkey-up (redis postgres) in %s failed:\n%s%s"
                               % (ns_name("s"), p.stdout, p.stderr))
        self.servers_up = True
        # PostgreSQL trusts 127.0.0.1 only (initdb --auth=trust): the stores' addresses too
        pg_data = None
        with open(os.path.join(srv_run, "env")) as f:
            for line in f:
                if line.startswith("export PG_DATA="):
                    pg_data = line.split("=", 1)[1].strip().strip("'")
        with open(os.path.join(pg_data, "pg_hba.conf"), "a") as f:
            f.write("host all all 10.231.3.0/24 trust\n")
        sh("ip", "netns", "exec", ns_name("s"), os.path.join(lk.PG_BIN, "psql"), "-XqtA", "-h",
           "127.0.0.1", "-p", "5432", "-U", "postgres", "-c", "select pg_reload_conf()")
        order = ["router", "session-store", "auth", "history-writer", "lock-arbiter"]
        for kind in order:
            for n in lk.replica_names(kind, self.replicas.get(kind, 1)):
                self._spawn(kind, n)
        for n in FE:
            self._spawn("mqtt-frontend", n)
        for n in list(self.procs):
            self._wait_ready(n)

    def _spawn(self, kind, node):
        role, ip = self.nodes[node]
        env = dict(os.environ)
        for k in list(env):
            if k.startswith("LATCHKEY_"):
                del env[k]
        for k, key in KEY.items():
            env["LATCHKEY_%s_REPLICAS" % key.upper()] = str(self.replicas.get(k, 1))
        env["LK57_LOG_LEVEL"] = os.environ.get("LK57_LOG_LEVEL", "notice")
        if kind == "mqtt-frontend":
            env["LK_CURVE_SECRET"] = os.path.join(self.keys, "mqtt-frontend.key_secret")
            env["LATCHKEY_LISTENER"] = "1883 " + ip
            # bound on every interface of the namespace, at its own port; told as fe-N
            env["LATCHKEY_FRONTEND_ENDPOINT"] = "tcp://%s:%d" % (node, 5560 + int(node[3:]))
        else:
            # the same endpoints as its clients: tcp://<its node name>:<port> is bound as
            # the name's address (lk_bus_bind resolves it)
            env["LK_CURVE_SECRET"] = os.path.join(self.keys, node + ".key_secret")
        r, w = os.pipe()
        proc = subprocess.Popen(["ip", "netns", "exec", ns_name(role), self.bin(kind),
                                 "-c", self.conf, "-n", node, "-r", str(w)],
                                env=env, cwd=self.run_dir, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                pass_fds=(w,), start_new_session=True)
        os.close(w)
        # each line stamped with the test's monotonic clock (the cut's times are on it)
        t = threading.Thread(target=self._stamp, args=(proc.stdout, node), daemon=True)
        t.start()
        self.procs[node] = (proc, r)

    def _stamp(self, pipe, node):
        with open(os.path.join(self.run_dir, "log", node + ".log"), "a") as f:
            for line in iter(pipe.readline, b""):
                f.write("%.3f %s" % (time.monotonic(), line.decode(errors="replace")))
                f.flush()

    def _wait_ready(self, node, timeout=40):
        proc, r = self.procs[node]
        deadline = time.monotonic() + timeout
        import select
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("%s exited (%d):\n%s" % (node, proc.returncode,
                                                            self.log_tail(node)))
            ready, _, _ = select.select([r], [], [], 0.2)
            if ready:
                data = os.read(r, 64)
                if b"\n" in data:
                    os.close(r)
                    return
        raise RuntimeError("%s not ready within %ss:\n%s" % (node, timeout, self.log_tail(node)))

    def log(self, node):
        try:
            with open(os.path.join(self.run_dir, "log", node + ".log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self, node, n=25):
        return "---- %s:\n%s" % (node, "\n".join(ln[:300] for ln in
                                                 self.log(node).splitlines()[-n:]))

    def alive(self):
        return {n: p.poll() is None for n, (p, _) in self.procs.items()}

    def stop(self):
        for n, (p, _) in self.procs.items():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except OSError:
                    pass
        for n, (p, _) in self.procs.items():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        if self.servers_up:
            subprocess.run([os.path.join(lk.ROOT, "supervise", "latchkey-down")],
                           env=self.srv_env, cwd=lk.ROOT, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=90)
            self.servers_up = False
        if not os.environ.get("LATCHKEY_KEEP_RUN"):
            shutil.rmtree(self.run_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if not shutil.which("ip"):
        pytest.skip("no `ip` (iproute2)")
    if not all(lk.built(s) for s in lk.DAEMONS):
        pytest.skip("daemons not built")
    _stale_cleanup()
    replicas = replhelp.replicas_from_env()
    nodes = nodes_of(replicas)
    net = Net(nodes)
    c = Cluster(net, nodes, replicas, lk.build_dir())
    try:
        c.start()
        # up when a client in the frontends' namespace gets CONNACK 0 from each frontend
        for n, ip in FE.items():
            lk.wait_until(lambda ip=ip: _connack_ok(ip), 30, interval=0.3,
                          what="CONNACK from %s" % n)
        yield c
    finally:
        try:
            c.stop()
        finally:
            net.remove()
        leftovers = [n for n in sh("ip", "netns", "list", check=False).split()
                     if n.endswith("-" + TAG) and n.startswith(PREFIX)]
        assert not leftovers, "namespaces left: %r" % leftovers


def _connack_ok(ip):
    with in_netns(ns_name("f")):
        try:
            return replhelp.raw_connack(ip, 1883, "lk57-up-%s" % RUN, 3) == 0
        except OSError:
            return False


def _fail_logs(c):
    return "\n".join(c.log_tail(n, 12) for n in c.procs)


def test_bus_is_tcp_between_namespaces(cluster):
    c = cluster
    assert all(c.alive().values()), c.alive()
    # the routers' bus port holds connections from the other two namespaces
    est = sh("ip", "netns", "exec", ns_name("r"), "ss", "-Htn", "state", "established")
    peers = {ln.split()[-1].rsplit(":", 1)[0] for ln in est.splitlines()
             if ":%d " % PORTS["router"] in ln + " "}
    assert any(p.startswith("10.231.1.") for p in peers), est
    assert any(p.startswith("10.231.3.") for p in peers), est
    assert not any(p.startswith("127.") for p in peers), est
    # Curve: the bus would refuse a plaintext tcp:// endpoint; no process complained
    for n in c.procs:
        assert "plaintext" not in c.log(n), c.log_tail(n)


def test_mosquitto_clients_across_frontends(cluster):
    topic = "lk57/m/%s" % RUN
    sub = subprocess.Popen(["ip", "netns", "exec", ns_name("f"), "mosquitto_sub", "-h",
                            FE["fe-1"], "-p", "1883", "-t", topic, "-q", "1", "-C", "3",
                            "-W", "30", "-i", "lk57-ms-" + RUN], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        time.sleep(1.0)   # the subscription in place (mosquitto_sub has no SUBACK hook)
        for i in range(3):
            sh("ip", "netns", "exec", ns_name("f"), "mosquitto_pub", "-h", FE["fe-2"], "-p",
               "1883", "-t", topic, "-q", "1", "-m", "m%d" % i, "-i", "lk57-mp-" + RUN)
        out, err = sub.communicate(timeout=40)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.communicate()
    assert out.split() == ["m0", "m1", "m2"], (out, err)


@pytest.mark.parametrize("role", ["r", "s", "f"], ids=["routers", "stores", "frontends"])
def test_partition(cluster, role):
    c = cluster
    prefix = "p%s/%s" % (role, RUN)
    with in_netns(ns_name("f")):
        # 2 pairs on each frontend: the load's threads live in the frontends' namespace
        load_a = replhelp.QoS1Load(FE["fe-1"], 1883, prefix + "/a", pairs=2, rate=20)
        load_b = replhelp.QoS1Load(FE["fe-2"], 1883, prefix + "/b", pairs=2, rate=20)
        load_a.start()
        load_b.start()
        probe = replhelp.ConnectProbe(FE["fe-2"], 1883, "lk57pr-%s-%s" % (role, RUN),
                                      every=0.1, timeout=15)
    loads = (load_a, load_b)
    try:
        time.sleep(1.5)
        assert all(len(l.arrivals[i]) > 5 for l in loads for i in range(l.pairs)), \
            "no traffic before the cut"
        c.net.cut(role)
        t_cut = time.monotonic()
        with in_netns(ns_name("f")):
            probe.start()
        time.sleep(CUT_S)
        # nothing published during the cut is acknowledged before it ends
        during = sum(l.sent_after(t_cut + 0.05) for l in loads)
        acked_during = sum(l.acked_sent_after(t_cut + 0.05) for l in loads)
        c.net.restore(role)
        t_restore = time.monotonic()
        lk.wait_until(lambda: all(a and a[-1][0] > t_restore for l in loads
                                  for a in l.arrivals), 30, interval=0.05,
                      what="traffic on every pair after the cut")
        time.sleep(1.0)
        for l in loads:
            l.stop_publishing()
        lost = {l.prefix: l.drain(timeout=40) for l in loads}
        results = probe.stop()
    finally:
        for l in loads:
            l.close()
        probe._stop.set()
    gap = max(l.gap(t_cut, t_restore) for l in loads)
    # how long after the cut ended each pair delivered again (the slowest pair)
    resume = max(min(t for t, _ in a if t > t_restore) - t_restore
                 for l in loads for a in l.arrivals)
    during_probe = [r for r in results if r[0] < t_restore]
    print("\ncut %s for %.1f s: %d published during it, %d of those acknowledged before "
          "it ended; delivery back %.2f s after it (longest gap %.2f s); %d CONNECTs during it "
          "(slowest %.2f s); client disconnects %d" % (ns_name(role), CUT_S, during,
                                                      acked_during, resume, gap,
                                                      len(during_probe), probe.slowest(),
                                     sum(l.disconnects for l in loads)))
    assert during > 0
    assert acked_during == 0, "PUBACKs while %s was cut off" % ns_name(role)
    assert not any(lost.values()), "acknowledged messages lost: %r\n%s" % (lost, _fail_logs(c))
    refused = [r for r in results if r[2] != 0]
    assert not refused, "CONNECTs refused or failed: %r" % refused[:10]
    assert during_probe, "no CONNECT tried during the cut"
    assert sum(l.disconnects for l in loads) == 0, "clients lost their connection"
    assert all(c.alive().values()), c.alive()
    # the failure detector (1 s) and a reconnect, not TCP's retransmission back-off
    assert resume < RESUME_S, "traffic back only %.2f s after the cut" % resume
