"""lk: helpers for the Latchkey integration tests.

Stack: one Latchkey stack (Redis, PostgreSQL and the services under s6) started with
supervise/latchkey-up --detach in its own run folder on free ports; conftest.py's
session fixture `stack` owns one. MQTT helpers: mosquitto_pub / mosquitto_sub (the
command-line clients, with timeouts) and paho_client (a connected paho-mqtt 1.6 client whose
received messages land in a queue, see Messages.wait_for).

Every wait here is bounded: a helper that times out raises (TimeoutError or
AssertionError) rather than hang; the per-test pytest-timeout is the last resort.
"""

import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import paho.mqtt.client as mqtt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVERS = ["redis", "postgres"]
DAEMONS = ["router", "session-store", "auth", "mqtt-frontend-1", "mqtt-frontend-2",
           "lock-arbiter", "history-writer", "api", "ota-distributor"]
ALL_SERVICES = SERVERS + DAEMONS
# the services that can run as replicas, and the configuration prefix of each
# (<prefix>_replicas, <prefix>_endpoint): latchkey-up's rep_prefix
REPLICA_PREFIX = {"router": "router", "session-store": "session", "auth": "auth",
                  "lock-arbiter": "arbiter", "history-writer": "history", "api": "api",
                  "ota-distributor": "ota"}
BINARY = {"router": "router", "session-store": "session-store", "auth": "auth",
          "mqtt-frontend-1": "mqtt-frontend", "mqtt-frontend-2": "mqtt-frontend",
          "lock-arbiter": "lock-arbiter", "history-writer": "history-writer", "api": "api",
          "ota-distributor": "ota-distributor"}
PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")

MQTTv31 = mqtt.MQTTv31
MQTTv311 = mqtt.MQTTv311
MQTTv5 = mqtt.MQTTv5


def free_port(exclude=()):
    """A TCP port free on 127.0.0.1 right now, not in exclude. Picked below the kernel's
    ephemeral range (ip_local_port_range starts at 32768 by default): a port the kernel
    chose could be taken by any outgoing connection (a test's own client) between this
    choice and the server's bind, and a stack whose listener cannot bind fails whole."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32768)
        if port in exclude:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port found")


def wait_until(predicate, timeout, interval=0.05, what="condition"):
    """Polls predicate() until it returns a true value (returned) or timeout seconds pass
    (TimeoutError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError("%s not reached within %.1fs" % (what, timeout))
        time.sleep(interval)


def build_dir():
    """The build folder under test (LATCHKEY_BUILD, default build), absolute."""
    b = os.environ.get("LATCHKEY_BUILD", "build")
    return b if os.path.isabs(b) else os.path.join(ROOT, b)


def fnv1a(s):
    """lk_replicas_home: which replica owns a key (home = fnv1a(key) % n)"""
    h = 2166136261
    for b in s.encode():
        h ^= b
        h = (h * 16777619) & 0xFFFFFFFF
    return h


def replica_names(svc, n):
    """The s6 service names of n replicas of svc (latchkey-up's scheme)."""
    return [svc] if n == 1 else ["%s-%d" % (svc, i) for i in range(1, n + 1)]


def built(svc, build=None):
    """True when the binary of service svc exists (servers always count as built)."""
    if svc not in BINARY:
        return True
    return os.access(os.path.join(build or build_dir(), "bin", BINARY[svc]), os.X_OK)


class StackError(RuntimeError):
    pass


class Stack:
    """A Latchkey stack in its own run folder. Attributes: mqtt_port, redis_port, pg_port,
    tls_port, mtls_port, ws_port, wss_port, proxy_port (supervise/latchkey.conf's extra
    listeners), tls_dir (their certificates, from supervise/make-certs), run_dir, build, services (the s6 services it runs), env (the environment given to
    latchkey-up). Methods: start_all, stop_all, kill(svc), svc_pid(svc), is_up(svc),
    has(svc), require(*svcs), redis_cli(*args), psql(sql), log(svc), processes()."""

    def __init__(self, services=None, run_dir=None, build=None, up_timeout=None, replicas=None,
                 redis_cluster=None, redis_wait_replicas=None):
        self.build = build or build_dir()
        if services is None:
            services = os.environ.get("LATCHKEY_SERVICES", "").split()
        if not services:
            services = ALL_SERVICES if all(built(s, self.build) for s in DAEMONS) else SERVERS
        # replicas: {"auth": 2, "history-writer": 2} (latchkey-up's LATCHKEY_REPLICAS);
        # a service with N > 1 replicas runs as <name>-1 .. <name>-N
        self.replicas = dict(replicas or {})
        services = [r for s in services for r in replica_names(s, self.replicas.get(s, 1))]
        self.services = list(services)
        parent = os.environ.get("LATCHKEY_TEST_TMP") or None
        self._own_dir = run_dir is None
        self.run_dir = run_dir or tempfile.mkdtemp(prefix="lk-stack-", dir=parent)
        # PostgreSQL runs as user postgres (when we are root) and must traverse run_dir.
        os.chmod(self.run_dir, 0o755)
        ports = set()
        self.mqtt_port = free_port(ports); ports.add(self.mqtt_port)
        self.redis_port = free_port(ports); ports.add(self.redis_port)
        self.pg_port = free_port(ports); ports.add(self.pg_port)
        # the extra listeners of supervise/latchkey.conf (TLS, mutual TLS, WebSocket,
        # WebSocket over TLS, PROXY protocol); certificates in <run_dir>/tls (tls_dir)
        self.tls_port = free_port(ports); ports.add(self.tls_port)
        self.mtls_port = free_port(ports); ports.add(self.mtls_port)
        self.ws_port = free_port(ports); ports.add(self.ws_port)
        self.wss_port = free_port(ports); ports.add(self.wss_port)
        self.proxy_port = free_port(ports); ports.add(self.proxy_port)
        self.api_port = free_port(ports); ports.add(self.api_port)
        self.api_https_port = free_port(ports); ports.add(self.api_https_port)
        self.ota_http_port = free_port(ports); ports.add(self.ota_http_port)
        self.tls_dir = os.path.join(self.run_dir, "tls")
        # latchkey-up's own bound; within pytest-timeout's 120 s for the first test
        self.up_timeout = int(up_timeout or os.environ.get("LATCHKEY_UP_TIMEOUT", 30))
        self.env = dict(os.environ)
        self.env.update({
            "RUN_DIR": self.run_dir,
            "MQTT_PORT": str(self.mqtt_port),
            "REDIS_PORT": str(self.redis_port),
            "PG_PORT": str(self.pg_port),
            "MQTT_TLS_PORT": str(self.tls_port),
            "MQTT_MTLS_PORT": str(self.mtls_port),
            "MQTT_WS_PORT": str(self.ws_port),
            "MQTT_WSS_PORT": str(self.wss_port),
            "MQTT_PROXY_PORT": str(self.proxy_port),
            "API_PORT": str(self.api_port),
            "API_HTTPS_PORT": str(self.api_https_port),
            "OTA_HTTP_PORT": str(self.ota_http_port),
            "BUILD": self.build,
            "LATCHKEY_BIN": os.path.join(self.build, "bin"),
            "LATCHKEY_SERVICES": " ".join(self.services),
            "LATCHKEY_UP_TIMEOUT": str(self.up_timeout),
            # every service records what it receives: exercised by every test, read by
            # test_08_msglog
            "LATCHKEY_MSGLOG_DIR": os.path.join(self.run_dir, "msglog"),
            # every test client comes from 127.0.0.1: the login back-off (fe_limits) would
            # slow down unrelated tests after others' deliberate bad logins; test_44 tests
            # it on a frontend of its own
            "LATCHKEY_AUTH_FAIL_THRESHOLD": "0",
            # ota-distributor signs the download URLs of its offers (test_60_ota)
            "LATCHKEY_OTA_URL_SECRET": "test-url-secret-0123456789",
            "LATCHKEY_REPLICAS": " ".join("%s=%d" % kv for kv in self.replicas.items()),
        })
        # what latchkey-up gives the daemons, for the CLI and helpers run from tests
        for kind, prefix in REPLICA_PREFIX.items():
            self.env["LATCHKEY_%s_REPLICAS" % prefix.upper()] = str(self.replicas.get(kind, 1))
        for k in ("LATCHKEY_CONF", "LATCHKEY_ROOT"):
            self.env.pop(k, None)
        # an external Redis Cluster ("host:port host:port ..."; leave "redis" out of
        # services): the daemons and the CLI use it, redis_cli() goes through its first seed
        self.redis_cluster = redis_cluster
        if redis_cluster:
            self.env["LATCHKEY_REDIS_CLUSTER"] = redis_cluster
        if redis_wait_replicas is not None:
            self.env["LATCHKEY_REDIS_WAIT_REPLICAS"] = str(redis_wait_replicas)
        self.running = False

    # ---- whole stack -------------------------------------------------------------------
    def start_all(self):
        """latchkey-up --detach: returns once every service is up and ready; raises
        StackError with latchkey-up's report (logs' tails) otherwise."""
        p = subprocess.run([os.path.join(ROOT, "supervise", "latchkey-up"), "--detach"],
                           env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=self.up_timeout + 30)
        if p.returncode != 0:
            raise StackError("latchkey-up --detach failed (%d):\n%s%s"
                             % (p.returncode, p.stdout, p.stderr))
        self.running = True
        self.svscan_pid = int(p.stdout.split()[-1])
        return self

    def stop_all(self):
        """latchkey-down: every process stopped (bounded); data kept. Raises StackError
        when processes had to be killed."""
        p = subprocess.run([os.path.join(ROOT, "supervise", "latchkey-down")],
                           env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=90)
        self.running = False
        if p.returncode != 0:
            raise StackError("latchkey-down failed (%d):\n%s%s"
                             % (p.returncode, p.stdout, p.stderr))

    def restart_all(self):
        self.stop_all()
        return self.start_all()

    def destroy(self):
        """stop_all, then remove the run folder (kept when LATCHKEY_KEEP_RUN is set)."""
        try:
            self.stop_all()
        finally:
            if self._own_dir and not os.environ.get("LATCHKEY_KEEP_RUN"):
                shutil.rmtree(self.run_dir, ignore_errors=True)

    def processes(self):
        """pids of live (non-zombie) processes working inside the run folder."""
        pids = []
        real = os.path.realpath(self.run_dir) + "/"
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                cwd = os.readlink("/proc/%s/cwd" % d)
                with open("/proc/%s/stat" % d) as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if (cwd + "/").startswith(real) and state != "Z":
                pids.append(int(d))
        return pids

    # ---- one service ------------------------------------------------------------------
    def scan(self, svc):
        return os.path.join(self.run_dir, "scan", svc)

    def has(self, svc):
        """svc runs here (a replicated one: all its replicas)"""
        return all(r in self.services for r in replica_names(svc, self.replicas.get(svc, 1)))

    def hold_down(self, name):
        """SIGKILL the service and keep it down (s6-svc -O: not restarted once it dies)."""
        for flag in ("-O", "-k"):
            subprocess.run(["s6-svc", flag, self.scan(name)], check=True, timeout=10)
        wait_until(lambda: not self.svstat(name)["up"], 10, what=name + " down")

    def bring_up(self, name):
        """start a service held down, and wait until it is up and ready"""
        subprocess.run(["s6-svc", "-u", self.scan(name)], check=True, timeout=10)
        self.wait_up(name, timeout=30)

    def names(self, svc):
        """the s6 service names of svc here: [svc], or its replicas svc-1 .. svc-N"""
        return replica_names(svc, self.replicas.get(svc, 1))

    def require(self, *svcs):
        """pytest.skip unless every service named runs in this stack."""
        import pytest
        missing = [s for s in svcs if not self.has(s)]
        if missing:
            pytest.skip("not running in this stack (not built?): " + " ".join(missing))

    def svstat(self, svc):
        p = subprocess.run(["s6-svstat", "-o", "up,ready,pid,wantedup", self.scan(svc)],
                           capture_output=True, text=True, timeout=10)
        if p.returncode != 0:
            raise StackError("s6-svstat %s: %s" % (svc, p.stderr.strip()))
        up, ready, pid, wanted = p.stdout.split()
        return {"up": up == "true", "ready": ready == "true", "pid": int(pid),
                "wantedup": wanted == "true"}

    def svc_pid(self, svc):
        """pid of the service's process (the daemon itself: run scripts exec it)."""
        return self.svstat(svc)["pid"]

    def is_up(self, svc):
        st = self.svstat(svc)
        return st["up"] and st["ready"]

    def wait_up(self, svc, timeout=30):
        p = subprocess.run(["s6-svwait", "-U", "-t", str(int(timeout * 1000)), self.scan(svc)],
                           capture_output=True, text=True, timeout=timeout + 10)
        if p.returncode != 0:
            raise StackError("%s not up and ready within %ss (s6-svwait %d)\n%s"
                             % (svc, timeout, p.returncode, self.log_tail(svc)))

    def kill(self, svc, timeout=30):
        """SIGKILL the service (s6-svc -k), then wait until s6 has restarted it and it is up
        and ready again. Returns the new pid."""
        old = self.svc_pid(svc)
        # s6-svlisten1 -R subscribes before running s6-svc, so the down-then-up-and-ready
        # transition cannot be missed.
        p = subprocess.run(["s6-svlisten1", "-R", "-t", str(int(timeout * 1000)), self.scan(svc),
                            "s6-svc", "-k", self.scan(svc)],
                           capture_output=True, text=True, timeout=timeout + 10)
        if p.returncode != 0:
            raise StackError("%s not back up and ready within %ss after SIGKILL (%d: %s)\n%s"
                             % (svc, timeout, p.returncode, p.stderr.strip(), self.log_tail(svc)))
        new = self.svc_pid(svc)
        assert new != old, "%s: pid %d unchanged after s6-svc -k" % (svc, old)
        return new

    def signal(self, svc, sig=signal.SIGTERM):
        os.kill(self.svc_pid(svc), sig)

    # ---- servers -----------------------------------------------------------------------
    def redis_cli(self, *args, timeout=10):
        """redis-cli against the stack's Redis; returns stdout without the final newline.
        Raises on a non-zero exit."""
        if self.redis_cluster:
            host, _, port = self.redis_cluster.split()[0].rpartition(":")
            target = ["-h", host, "-p", port, "-c"]
        else:
            target = ["-h", "127.0.0.1", "-p", str(self.redis_port)]
        p = subprocess.run(["redis-cli"] + target
                           + [str(a) for a in args], capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise StackError("redis-cli %s: %s" % (" ".join(map(str, args)), p.stderr.strip()))
        return p.stdout.rstrip("\n")

    def psql(self, sql, db="latchkey", timeout=10):
        """Runs sql with psql (unaligned, tuples only, ON_ERROR_STOP); returns stdout."""
        p = subprocess.run([os.path.join(PG_BIN, "psql"), "-XqtA", "-v", "ON_ERROR_STOP=1",
                            "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "postgres",
                            "-d", db, "-c", sql], capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise StackError("psql: %s" % p.stderr.strip())
        return p.stdout.rstrip("\n")

    @property
    def pg_conninfo(self):
        return "host=127.0.0.1 port=%d dbname=latchkey user=postgres" % self.pg_port

    # ---- logs --------------------------------------------------------------------------
    def log(self, svc):
        """The service's log text (archived files, then current), each line starting with
        s6-log's @TAI64N stamp."""
        d = os.path.join(self.run_dir, "log", svc)
        try:
            names = sorted(n for n in os.listdir(d) if n.startswith("@"))
        except FileNotFoundError:
            return ""
        text = []
        for n in names + ["current"]:
            try:
                with open(os.path.join(d, n), errors="replace") as f:
                    text.append(f.read())
            except FileNotFoundError:
                pass
        return "".join(text)

    def log_tail(self, svc, lines=30, header=True):
        tail = "\n".join(self.log(svc).splitlines()[-lines:])
        return "---- log of %s:\n%s" % (svc, tail) if header else tail

    def wait_log(self, svc, text, timeout=10):
        """Waits until text appears in the service's log; returns the log."""
        return wait_until(lambda: text in self.log(svc) and self.log(svc), timeout,
                          what="%r in the log of %s" % (text, svc))


# ---- MQTT: command-line clients -----------------------------------------------------------
def _port(target):
    return target.mqtt_port if hasattr(target, "mqtt_port") else int(target)


def _common_args(target, client_id, username, password, protocol, extra):
    args = ["-h", "127.0.0.1", "-p", str(_port(target))]
    if client_id:
        args += ["-i", client_id]
    if username is not None:
        args += ["-u", username]
    if password is not None:
        args += ["-P", password]
    if protocol:
        args += ["-V", protocol]
    return args + list(extra)


def mosquitto_pub(target, topic, message, qos=0, retain=False, client_id=None, username=None,
                  password=None, protocol=None, extra=(), timeout=10, check=True):
    """Publishes one message with mosquitto_pub to the stack (or a port). protocol: None,
    "mqttv31", "mqttv311" or "mqttv5". Returns the CompletedProcess; raises
    CalledProcessError when check and it fails, TimeoutExpired after timeout seconds."""
    args = ["mosquitto_pub"] + _common_args(target, client_id, username, password, protocol,
                                            extra)
    args += ["-t", topic, "-q", str(qos)]
    if isinstance(message, bytes):
        args += ["-s"]
        data = message
    elif message is None:
        args += ["-n"]
        data = b""
    else:
        args += ["-m", message]
        data = b""
    if retain:
        args.append("-r")
    p = subprocess.run(args, input=data, capture_output=True, timeout=timeout)
    if check and p.returncode != 0:
        raise subprocess.CalledProcessError(p.returncode, args, p.stdout, p.stderr)
    return p


def mosquitto_sub(target, topic, count=1, timeout=10, qos=0, client_id=None, clean=True,
                  username=None, password=None, protocol=None, with_topic=False, extra=()):
    """Subscribes with mosquitto_sub until count messages arrived or timeout seconds passed
    (-C count -W timeout); returns the payloads as str (or (topic, payload) pairs when
    with_topic). Fewer than count messages is not an error here: compare the length."""
    args = ["mosquitto_sub"] + _common_args(target, client_id, username, password, protocol,
                                            extra)
    if isinstance(topic, str):
        topic = [topic]
    for t in topic:
        args += ["-t", t]
    args += ["-q", str(qos), "-C", str(count), "-W", str(max(1, int(round(timeout))))]
    if not clean:
        args.append("-c")
    if with_topic:
        args += ["-F", "%t\t%p"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout + 10,
                       stdin=subprocess.DEVNULL)
    lines = p.stdout.splitlines()
    if with_topic:
        return [tuple(line.split("\t", 1)) for line in lines]
    return lines


def mosquitto_sub_start(target, topic, qos=0, client_id=None, clean=True, extra=()):
    """Starts mosquitto_sub in the background (-v: "topic payload" lines); the caller
    stops it with stop_process() and reads proc.stdout."""
    args = ["mosquitto_sub"] + _common_args(target, client_id, None, None, None, extra)
    args += ["-t", topic, "-q", str(qos), "-v"]
    if not clean:
        args.append("-c")
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def stop_process(proc, timeout=5):
    """SIGTERM, then SIGKILL after timeout; returns (stdout, stderr)."""
    proc.terminate()
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate(timeout=timeout)


# ---- MQTT: paho -------------------------------------------------------------------------
class Message:
    """One received message: topic (str), payload (bytes), qos, retain, dup, mid,
    properties (MQTT 5, else None), t (monotonic arrival time)."""
    __slots__ = ("topic", "payload", "qos", "retain", "dup", "mid", "properties", "t")

    def __init__(self, m):
        self.topic = m.topic
        self.payload = m.payload
        self.qos = m.qos
        self.retain = bool(m.retain)
        self.dup = bool(m.dup)
        self.mid = m.mid
        self.properties = getattr(m, "properties", None)
        self.t = time.monotonic()

    @property
    def text(self):
        return self.payload.decode("utf-8", "replace")

    def __repr__(self):
        return "Message(%r, %r, qos=%d, retain=%s, dup=%s)" % (
            self.topic, self.payload, self.qos, self.retain, self.dup)


class Messages:
    """Queue of messages received by a client (paho's network thread puts, tests take)."""

    def __init__(self):
        self.q = queue.Queue()
        self.all = []  # every message taken so far, in order

    def put(self, paho_msg):
        self.q.put(Message(paho_msg))

    def wait_for(self, n, timeout=10):
        """The next n messages; AssertionError (listing what came) if they do not all arrive
        within timeout seconds."""
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < n:
            left = deadline - time.monotonic()
            try:
                got.append(self.q.get(timeout=max(0.0, left)))
            except queue.Empty:
                self.all += got
                raise AssertionError("expected %d message(s) within %.1fs, got %d: %r"
                                     % (n, timeout, len(got), got))
        self.all += got
        return got

    def get(self, timeout=10):
        return self.wait_for(1, timeout)[0]

    def drain(self, quiet=0.5, timeout=10):
        """Every message until none arrived for `quiet` seconds (at most timeout seconds)."""
        got = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got.append(self.q.get(timeout=min(quiet, max(0.0, deadline - time.monotonic()))))
            except queue.Empty:
                break
        self.all += got
        return got

    def expect_none(self, quiet=0.5):
        """AssertionError if any message arrives within quiet seconds."""
        got = self.drain(quiet=quiet, timeout=quiet)
        assert not got, "expected no message, got %r" % got


class ConnectError(Exception):
    def __init__(self, rc, msg):
        super().__init__(msg)
        self.rc = rc


class Client:
    """A paho-mqtt client running its network loop in a thread. Attributes: paho (the
    mqtt.Client), messages (Messages), connack_rc, session_present, connack_properties,
    disconnected (threading.Event), disconnect_rc. Attribute access falls through to the
    paho client. Use as a context manager, or call disconnect()/close()."""

    def __init__(self, client_id, clean_session=True, protocol=MQTTv311, userdata=None):
        self.protocol = protocol
        self.clean_session = clean_session
        if protocol == MQTTv5:
            self.paho = mqtt.Client(client_id=client_id, protocol=protocol)
        else:
            self.paho = mqtt.Client(client_id=client_id, clean_session=clean_session,
                                    protocol=protocol)
        self.client_id = client_id
        self.messages = Messages()
        self.connack_rc = None
        self.session_present = None
        self.connack_properties = None
        self.disconnect_rc = None
        self._connected = threading.Event()
        self.disconnected = threading.Event()
        self._subacks = {}
        self._lock = threading.Lock()
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_message = lambda c, u, m: self.messages.put(m)
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_unsubscribe = self._on_unsubscribe

    def __getattr__(self, name):
        paho = self.__dict__.get("paho")
        if paho is None:
            raise AttributeError(name)
        return getattr(paho, name)

    def _on_connect(self, client, userdata, flags, rc, properties=None):
        self.connack_rc = rc if isinstance(rc, int) else rc.value
        self.session_present = bool(flags.get("session present"))
        self.connack_properties = properties
        self._connected.set()

    def _on_disconnect(self, client, userdata, rc, properties=None):
        self.disconnect_rc = rc if isinstance(rc, int) else getattr(rc, "value", rc)
        self.disconnected.set()

    def _on_subscribe(self, client, userdata, mid, granted, properties=None):
        granted = [g if isinstance(g, int) else g.value for g in granted]
        with self._lock:
            ev = self._subacks.setdefault(mid, [threading.Event(), None])
            ev[1] = granted
            ev[0].set()

    def _on_unsubscribe(self, client, userdata, mid, *rest):
        with self._lock:
            ev = self._subacks.setdefault(mid, [threading.Event(), None])
            ev[1] = True
            ev[0].set()

    def _ack_event(self, mid):
        with self._lock:
            return self._subacks.setdefault(mid, [threading.Event(), None])

    def connect(self, port, keepalive=60, timeout=10, check=True, properties=None):
        """Connects, starts the network thread and waits for CONNACK (TimeoutError after
        timeout seconds). With check, a refused connection raises ConnectError."""
        self._connected.clear()
        self.disconnected.clear()
        if self.protocol == MQTTv5:
            self.paho.connect("127.0.0.1", port, keepalive, clean_start=self.clean_session,
                              properties=properties)
        else:
            self.paho.connect("127.0.0.1", port, keepalive)
        self.paho.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise TimeoutError("%s: no CONNACK within %.1fs" % (self.client_id, timeout))
        if check and self.connack_rc != 0:
            self.close()
            raise ConnectError(self.connack_rc, "%s: connection refused, rc %s"
                               % (self.client_id, self.connack_rc))
        return self

    def subscribe(self, topic, qos=0, timeout=10, **kw):
        """Subscribes (topic str, or list of (topic, qos)) and waits for SUBACK; returns
        the granted QoS list (128 / >=0x80 = refused)."""
        rc, mid = self.paho.subscribe(topic, qos, **kw)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectError(rc, "subscribe: not connected (rc %d)" % rc)
        ev = self._ack_event(mid)
        if not ev[0].wait(timeout):
            raise TimeoutError("%s: no SUBACK within %.1fs" % (self.client_id, timeout))
        return ev[1]

    def unsubscribe(self, topic, timeout=10, **kw):
        rc, mid = self.paho.unsubscribe(topic, **kw)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectError(rc, "unsubscribe: not connected (rc %d)" % rc)
        if not self._ack_event(mid)[0].wait(timeout):
            raise TimeoutError("%s: no UNSUBACK within %.1fs" % (self.client_id, timeout))

    def publish(self, topic, payload=None, qos=0, retain=False, timeout=10, wait=True, **kw):
        """Publishes; with wait, returns once the message is sent (QoS 0), PUBACKed (1) or
        PUBCOMPed (2), else raises TimeoutError. Returns paho's MQTTMessageInfo."""
        info = self.paho.publish(topic, payload, qos, retain, **kw)
        if wait:
            info.wait_for_publish(timeout)
            if not info.is_published():
                raise TimeoutError("%s: publish to %s (qos %d) not acknowledged within %.1fs"
                                   % (self.client_id, topic, qos, timeout))
        return info

    def wait_for(self, n, timeout=10):
        return self.messages.wait_for(n, timeout)

    def wait_disconnected(self, timeout=10):
        if not self.disconnected.wait(timeout):
            raise TimeoutError("%s: still connected after %.1fs" % (self.client_id, timeout))
        return self.disconnect_rc

    def disconnect(self, timeout=5):
        """Clean DISCONNECT (no Will), then stops the network thread."""
        try:
            if self.paho.is_connected():
                self.paho.disconnect()
                self.disconnected.wait(timeout)
        finally:
            self.paho.loop_stop()

    def close(self):
        """Drops the TCP connection without DISCONNECT (the Will is published)."""
        self.paho.loop_stop()
        sock = self.paho.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.disconnect()


def paho_client(stack, client_id, clean_session=True, protocol=MQTTv311, username=None,
                password=None, will=None, keepalive=60, timeout=10, check=True, connect=True,
                properties=None):
    """A paho Client connected to the stack's MQTT port (stack: a Stack or a port number)
    with CONNACK received. will: dict(topic=, payload=, qos=, retain=) or None.
    clean_session is clean start for MQTTv5. With connect=False the client is returned
    unconnected (call .connect(port)). See Client for the rest."""
    c = Client(client_id, clean_session=clean_session, protocol=protocol)
    if username is not None:
        c.paho.username_pw_set(username, password)
    if will:
        c.paho.will_set(**will)
    if connect:
        c.connect(_port(stack), keepalive=keepalive, timeout=timeout, check=check,
                  properties=properties)
    return c
