"""Latchkey in containers (docker/compose.yaml) with Docker's engine: the stack with three
frontends, real MQTT clients (paho) on each frontend (its container's address) and on the
published port (the lb container), and faults done the way an operator meets them.
Run by tests/containers/run (make test-containers), which provides the engine and the
images; COMPOSE_PROJECT_NAME, MQTT_PORT, API_PORT, OTA_PORT and LATCHKEY_IMAGE come from it."""
import hashlib
import json
import os
import re
import subprocess
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMPOSE = os.path.join(ROOT, "docker", "compose.yaml")
PROJECT = os.environ.get("COMPOSE_PROJECT_NAME", "lkct")
MQTT_PORT = int(os.environ.get("MQTT_PORT", "21883"))
API_PORT = int(os.environ.get("API_PORT", "18083"))
OTA_PORT = int(os.environ.get("OTA_PORT", "8090"))
USER, PASSWORD = "ct-user", "ct-secret-" + uuid.uuid4().hex[:8]
SERVICES = ("router", "session-store", "auth", "lock-arbiter", "history-writer", "api",
            "ota-distributor")


def dc(*args, check=True, timeout=600):
    p = subprocess.run(["docker-compose", "-p", PROJECT, "-f", COMPOSE] + list(args),
                       capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise AssertionError("docker-compose %s: exit %d\n%s%s"
                             % (" ".join(args), p.returncode, p.stdout, p.stderr))
    return p


def docker(*args, check=True, timeout=120):
    p = subprocess.run(["docker"] + list(args), capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise AssertionError("docker %s: exit %d\n%s%s"
                             % (" ".join(args), p.returncode, p.stdout, p.stderr))
    return p


def wait_until(pred, timeout, what, interval=0.2):
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise TimeoutError("%s: not within %.0f s" % (what, timeout))
        time.sleep(interval)


def containers(service, running_only=False):
    """ids of the project's containers of a compose service"""
    args = ["ps", "-q", "--no-trunc", "--filter", "label=com.docker.compose.project=" + PROJECT,
            "--filter", "label=com.docker.compose.service=" + service]
    if not running_only:
        args.insert(1, "-a")
    return docker(*args).stdout.split()


def inspect(cid):
    return json.loads(docker("inspect", cid).stdout)[0]


def inspect_all():
    """{service: [container state dicts]} of the project's running containers"""
    ids = docker("ps", "-q", "--no-trunc", "--filter",
                 "label=com.docker.compose.project=" + PROJECT).stdout.split()
    out = {}
    if ids:
        for c in json.loads(docker("inspect", *ids).stdout):
            out.setdefault(c["Config"]["Labels"]["com.docker.compose.service"], []).append(c)
    return out


def health(cid):
    st = inspect(cid)["State"]
    return st.get("Health", {}).get("Status") or st["Status"]


def ip_of(c):
    nets = (c if isinstance(c, dict) else inspect(c))["NetworkSettings"]["Networks"]
    return next(iter(nets.values()))["IPAddress"]


def frontends():
    """{container id: ip} of the running mqtt-frontend containers"""
    return {c["Id"]: ip_of(c) for c in inspect_all().get("mqtt-frontend", [])}


def all_healthy(n_frontends):
    def ok():
        by = inspect_all()
        for svc in SERVICES + ("redis", "postgres", "mqtt-frontend", "lb"):
            cs = by.get(svc, [])
            want = n_frontends if svc == "mqtt-frontend" else 1
            if len(cs) != want or any(c["State"].get("Health", {}).get("Status") != "healthy"
                                      for c in cs):
                return False
        return True
    return ok


def up(n_frontends):
    dc("up", "-d", "--scale", "mqtt-frontend=%d" % n_frontends, timeout=900)
    wait_until(all_healthy(n_frontends), 180, "every container healthy")


def service_pid(service):
    """the pid (in the container) of the service's process, from s6"""
    cid = containers(service)[0]
    out = docker("exec", cid, "s6-svstat", "-o", "pid", "/run/latchkey/scan/" + service)
    return cid, int(out.stdout.strip())


class Client:
    """paho on its own network thread; messages collected as (topic, payload, qos)"""

    def __init__(self, cid, host, port=1883, clean=True, reconnect=False):
        self.cid, self.host, self.port = cid, host, port
        self.c = mqtt.Client(client_id=cid, clean_session=clean)
        self.c.username_pw_set(USER, PASSWORD)
        self.c.reconnect_delay_set(0.2, 1)
        self.lock = threading.Lock()
        self.msgs = []
        self.acked = []          # payloads of our QoS >= 1 publishes the broker acked
        self.pending = {}        # mid -> payload
        self.early = set()
        self.connected = threading.Event()
        self.session_present = None
        self.rc = None
        self.connects = 0
        self.reconnect = reconnect
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_publish = self._on_publish
        self.subacks = {}
        self.c.on_subscribe = self._on_subscribe
        self.c.on_disconnect = lambda c, u, rc: self.connected.clear()

    def _on_connect(self, c, u, flags, rc):
        self.rc = rc
        self.session_present = bool(flags.get("session present"))
        self.connects += 1
        if rc == 0:
            self.connected.set()

    def _on_message(self, c, u, m):
        with self.lock:
            self.msgs.append((m.topic, m.payload.decode(), m.qos))

    def _on_publish(self, c, u, mid):
        with self.lock:
            p = self.pending.pop(mid, None)
            if p is not None:
                self.acked.append(p)
            else:
                self.early.add(mid)  # acked before publish() returned

    def start(self, timeout=20):
        if self.reconnect:
            self.c.connect_async(self.host, self.port, 30)
        else:
            self.c.connect(self.host, self.port, 30)
        self.c.loop_start()
        if not self.connected.wait(timeout):
            raise TimeoutError("%s: no CONNACK from %s:%d (rc %s)"
                               % (self.cid, self.host, self.port, self.rc))
        return self

    def _on_subscribe(self, c, u, mid, granted):
        with self.lock:
            self.subacks[mid] = granted

    def subscribe(self, topic, qos):
        rc, mid = self.c.subscribe(topic, qos)
        assert rc == 0
        granted = wait_until(lambda: self.subacks.get(mid), 15, "%s: SUBACK" % self.cid)
        assert granted[0] == qos, granted

    def publish(self, topic, payload, qos, retain=False):
        # never under self.lock: paho calls on_publish holding its own locks
        info = self.c.publish(topic, payload, qos, retain)
        if qos > 0:
            with self.lock:
                if info.mid in self.early:
                    self.early.discard(info.mid)
                    self.acked.append(payload)
                else:
                    self.pending[info.mid] = payload
        return info

    def payloads(self, topic=None):
        with self.lock:
            return [p for t, p, q in self.msgs if topic is None or t == topic]

    def wait_payloads(self, want, timeout, topic=None):
        want = set(want)
        return wait_until(lambda: want <= set(self.payloads(topic)) or None, timeout,
                          "%s: %d messages (has %d)" % (self.cid, len(want),
                                                        len(want & set(self.payloads(topic)))))

    def stop(self):
        try:
            self.c.disconnect()
        finally:
            self.c.loop_stop()


@pytest.fixture(scope="module", autouse=True)
def stack(request):
    dc("down", "-v", "--remove-orphans", check=False)
    t = time.monotonic()
    up(3)
    print("stack up with 3 frontends in %.1f s" % (time.monotonic() - t))
    dc("exec", "-T", "router", "latchkey", "passwd", USER, PASSWORD)
    dc("exec", "-T", "router", "latchkey", "user", "superuser", USER, "on")
    yield
    if request.session.testsfailed:
        logs = dc("logs", "--no-color", "--tail", "40", check=False).stdout
        print(logs[-30000:])
    dc("down", "-v", "--remove-orphans", check=False)


def test_every_service_in_its_own_container():
    fes = frontends()
    assert len(fes) == 3
    netns = set()
    for svc in SERVICES + ("redis", "postgres", "lb"):
        cs = containers(svc)
        assert len(cs) == 1, svc
        netns.add(os.readlink("/proc/%d/ns/net" % inspect(cs[0])["State"]["Pid"]))
    for c in fes:
        netns.add(os.readlink("/proc/%d/ns/net" % inspect(c)["State"]["Pid"]))
        # node id from the container's hostname: fe-<hostname>, unique per copy
        log = docker("logs", c).stdout + docker("logs", c).stderr
        assert "mqtt-frontend as node fe-%s" % inspect(c)["Config"]["Hostname"] in log
    # each its own network namespace
    assert len(netns) == len(SERVICES) + 3 + 3
    # the bus over tcp:// with CurveZMQ: each container holds its own certificate only
    # through the keys volume; nothing plain
    for svc in SERVICES:
        env = docker("exec", containers(svc, True)[0], "sh", "-c",
                     "cat /proc/1/environ | tr '\\0' '\\n' | grep LK_CURVE_NAME").stdout
        assert "LK_CURVE_NAME=%s" % svc in env


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_clients_on_every_frontend_hear_each_other(qos):
    fes = list(frontends().items())
    assert len(fes) == 3
    topic = "ct/x/%d/%s" % (qos, uuid.uuid4().hex[:6])
    subs = [Client("sub-%d-%d" % (qos, i), ip).start() for i, (c, ip) in enumerate(fes)]
    # one subscriber through the published port too
    subs.append(Client("sub-%d-lb" % qos, "127.0.0.1", MQTT_PORT).start())
    for s in subs:
        s.subscribe(topic, qos)
    pubs = [Client("pub-%d-%d" % (qos, i), ip).start() for i, (c, ip) in enumerate(fes)]
    want = []
    for k in range(5):
        for i, p in enumerate(pubs):
            payload = "m-%d-%d" % (i, k)
            want.append(payload)
            p.publish(topic, payload, qos).wait_for_publish(10)
    for s in subs:
        s.wait_payloads(want, 20)
        got = s.payloads()
        if qos < 2:
            assert sorted(set(got)) == sorted(want)
        else:
            assert sorted(got) == sorted(want)  # exactly once
        # per publisher, in order
        for i in range(len(pubs)):
            mine = [p for p in got if p.startswith("m-%d-" % i)]
            assert mine == sorted(set(mine), key=lambda x: int(x.split("-")[2])), mine
    for c in subs + pubs:
        c.stop()


def test_frontends_hand_qos0_to_each_other_directly():
    # the frontends' direct links (tcp://<hostname>:5560, CurveZMQ) carried the QoS 0 test
    fes = frontends()
    linked = 0
    for c in fes:
        out = docker("logs", c)
        if "direct link to fe-" in out.stdout + out.stderr:
            linked += 1
    assert linked >= 2, "frontends with a direct link to another: %d" % linked


def _kill_and_check(service):
    fes = list(frontends().values())
    topic = "ct/kill/%s/%s" % (service, uuid.uuid4().hex[:6])
    sub = Client("ks-" + service, fes[0], clean=False, reconnect=True).start()
    sub.subscribe(topic, 1)
    pub = Client("kp-" + service, fes[1], reconnect=True).start()
    stop = threading.Event()

    def publish():
        n = 0
        while not stop.is_set():
            if pub.connected.is_set():
                pub.publish(topic, "k-%d" % n, 1)
                n += 1
            time.sleep(0.01)
    th = threading.Thread(target=publish, daemon=True)
    th.start()
    try:
        _kill_during(service, pub)
    finally:
        stop.set()
        th.join()
    with pub.lock:
        acked = list(pub.acked)
    # every acknowledged message reaches the persistent subscriber
    sub.wait_payloads(acked, 60)
    got = sub.payloads()
    print("kill -9 %s: %d acked, %d received (%d duplicates)"
          % (service, len(acked), len(got), len(got) - len(set(got))))
    pub.stop()
    sub.stop()


def _kill_during(service, pub):
    wait_until(lambda: len(pub.acked) >= 50, 20, "50 acked before the kill")
    cid, pid = service_pid(service)
    started = inspect(cid)["State"]["StartedAt"]
    docker("exec", cid, "sh", "-c", "kill -9 %d" % pid)
    # s6 inside the container starts it again: a new process, the same container
    wait_until(lambda: service_pid(service)[1] not in (pid, 0, -1), 20, service + " restarted")
    assert inspect(cid)["State"]["StartedAt"] == started
    wait_until(lambda: health(cid) == "healthy", 60, service + " healthy again")
    n_before = len(pub.acked)
    wait_until(lambda: len(pub.acked) >= n_before + 100, 60, "traffic resumed after the kill")


def test_kill_9_router_loses_no_acked_qos1():
    _kill_and_check("router")


def test_kill_9_session_store_loses_no_acked_qos1():
    _kill_and_check("session-store")


def test_container_whose_init_is_killed_comes_back():
    # kill -9 of the container's PID 1 (s6-svscan) from the host: the restart policy
    # (unless-stopped) starts the container again; `docker kill` would be a manual stop
    cid = containers("auth")[0]
    st = inspect(cid)["State"]
    os.kill(st["Pid"], 9)
    wait_until(lambda: inspect(cid)["State"]["StartedAt"] != st["StartedAt"], 30,
               "auth's container restarted")
    wait_until(lambda: health(cid) == "healthy", 60, "auth healthy again")
    fes = list(frontends().values())
    a = Client("ak-a", fes[0]).start()
    a.subscribe("ct/auth-back", 1)
    b = Client("ak-b", fes[1]).start()
    b.publish("ct/auth-back", "back", 1).wait_for_publish(10)
    a.wait_payloads(["back"], 20)
    a.stop()
    b.stop()


def test_down_up_keeps_retained_and_sessions():
    fe = list(frontends().values())[0]
    topic = "ct/persist/" + uuid.uuid4().hex[:6]
    p = Client("dp", fe).start()
    p.publish(topic + "/r", "kept", 1, retain=True).wait_for_publish(10)
    s = Client("du-sub", fe, clean=False).start()
    s.subscribe(topic + "/q", 1)
    s.stop()
    for k in range(5):
        p.publish(topic + "/q", "q-%d" % k, 1).wait_for_publish(10)
    p.stop()
    dc("down", timeout=300)
    assert not containers("router")
    up(3)
    fe = list(frontends().values())[1]
    s = Client("du-sub", fe, clean=False).start()
    assert s.session_present
    s.wait_payloads(["q-%d" % k for k in range(5)], 30)
    s.stop()
    r = Client("du-r", "127.0.0.1", MQTT_PORT).start()
    r.subscribe(topic + "/r", 1)
    r.wait_payloads(["kept"], 20)
    r.stop()


def test_scale_3_5_2_while_clients_run():
    topic = "ct/scale/" + uuid.uuid4().hex[:6]
    # the steady clients come through the published port (lb), reconnecting when the
    # frontend under them goes away
    sub = Client("sc-sub", "127.0.0.1", MQTT_PORT, clean=False, reconnect=True).start()
    sub.subscribe(topic, 1)
    pub = Client("sc-pub", "127.0.0.1", MQTT_PORT, reconnect=True).start()
    stop = threading.Event()
    sent = [0]

    def publish():
        while not stop.is_set():
            if pub.connected.is_set():
                pub.publish(topic, "s-%d" % sent[0], 1)
                sent[0] += 1
            time.sleep(0.02)
    th = threading.Thread(target=publish, daemon=True)
    th.start()
    late = []  # (client, first index published after its SUBACK)
    try:
        wait_until(lambda: len(pub.acked) >= 20, 20, "traffic before scaling")
        for n in (5, 2):
            dc("up", "-d", "--no-recreate", "--scale", "mqtt-frontend=%d" % n, timeout=600)
            wait_until(all_healthy(n), 120, "%d frontends healthy" % n)
            fes = list(frontends().values())
            assert len(fes) == n
            # every frontend carries clients, which reach each other
            t2 = "%s/each/%d" % (topic, n)
            cs = [Client("sc-%d-%d" % (n, i), ip).start() for i, ip in enumerate(fes)]
            for c in cs:
                c.subscribe(t2, 1)
            for i, c in enumerate(cs):
                c.publish(t2, "e-%d" % i, 1).wait_for_publish(10)
            for c in cs:
                c.wait_payloads(["e-%d" % i for i in range(n)], 20)
                c.stop()
            if n == 5:
                # more steady subscribers through lb: leastconn puts them on the new
                # frontends, which scaling down to 2 removes
                for i in range(5):
                    c = Client("sc-late-%d" % i, "127.0.0.1", MQTT_PORT, clean=False,
                               reconnect=True).start()
                    c.subscribe(topic, 1)
                    late.append((c, sent[0] + 1))
            k = len(pub.acked)
            wait_until(lambda: len(pub.acked) >= k + 20, 60, "traffic with %d frontends" % n)
    finally:
        stop.set()
        th.join()
    with pub.lock:
        acked = list(pub.acked)
    sub.wait_payloads(acked, 60, topic)
    moved = 0
    for c, first in late:
        c.wait_payloads([p for p in acked if int(p[2:]) >= first], 60, topic)
        moved += c.connects > 1
        c.stop()
    print("scale: %d acked of %d sent; %d of %d late subscribers moved to another frontend"
          % (len(acked), sent[0], moved, len(late)))
    # scaling down took frontends from under clients, which came back through lb
    assert moved >= 1
    pub.stop()
    sub.stop()


def curl(*args, timeout=30):
    """curl on the host (the published ports): (HTTP status, body bytes)"""
    p = subprocess.run(["curl", "-sS", "-m", "20", "-o", "-", "-w", "\n%{http_code}"] + list(args),
                       capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, "curl %s: exit %d %s" % (args, p.returncode, p.stderr)
    body, _, code = p.stdout.rpartition(b"\n")
    return int(code), body


def test_api_lists_the_clients_of_every_frontend():
    out = dc("exec", "-T", "router", "latchkey", "apikey", "add", "ct-ops").stdout
    key = re.search(r"^key (\S+)$", out, re.M).group(1)
    secret = re.search(r"^secret (\S+)$", out, re.M).group(1)
    url = "http://127.0.0.1:%d" % API_PORT
    # three frontends again (the scaling test may have left two)
    dc("up", "-d", "--no-recreate", "--scale", "mqtt-frontend=3", timeout=600)
    wait_until(all_healthy(3), 120, "3 frontends healthy")
    # no key, a wrong secret: refused
    assert curl(url + "/api/v5/clients")[0] == 401
    assert curl("-u", key + ":wrong", url + "/api/v5/clients")[0] == 401
    fes = frontends()
    assert len(fes) == 3
    tag = uuid.uuid4().hex[:6]
    cs = [Client("api-%s-%d" % (tag, i), ip).start() for i, ip in enumerate(fes.values())]
    want = {c.cid for c in cs}

    def listed():
        code, body = curl("-u", "%s:%s" % (key, secret),
                          url + "/api/v5/clients?like_clientid=api-%s&limit=100" % tag)
        if code != 200:
            return None
        data = json.loads(body)["data"]
        return data if {d["clientid"] for d in data} >= want else None
    data = wait_until(listed, 60, "the api lists the clients of 3 frontends", interval=1)
    nodes = {d["node"] for d in data if d["clientid"] in want}
    # each client on its own frontend: fe-<hostname> of three containers
    hostnames = {inspect(c)["Config"]["Hostname"] for c in fes}
    assert nodes == {"fe-" + h for h in hostnames}, nodes
    assert all(d["connected"] for d in data if d["clientid"] in want)
    for c in cs:
        c.stop()
    # the dashboard's files are in the image, its charts library included; /metrics
    code, body = curl(url + "/")
    assert code == 200 and b"<html" in body.lower()
    code, body = curl(url + "/vendor/uPlot.iife.min.js")
    assert code == 200 and len(body) > 10000
    code, body = curl(url + "/metrics")
    assert code == 200 and b"# TYPE" in body
    print("api: %d clients on %d frontends listed" % (len(want), len(nodes)))


def test_ota_distributor_serves_an_added_image_with_ranges():
    cid = containers("ota-distributor", True)[0]
    assert health(cid) == "healthy"
    fw = os.urandom(300 * 1024)
    sha = hashlib.sha256(fw).hexdigest()
    model, token = "ct-" + uuid.uuid4().hex[:6], "tok-" + uuid.uuid4().hex
    # the firmware handed in on stdin; keygen and add in the container, as user latchkey
    # (ota_dir is the firmware volume, which ota-distributor reads)
    p = subprocess.run(["docker", "exec", "-i", "-u", "latchkey", cid, "sh", "-c",
                        "set -e; cat >/tmp/fw.bin; rm -rf /tmp/otak; latchkey ota keygen /tmp/otak; "
                        "latchkey ota add --model %s --version 1.1 --key /tmp/otak/ota.key /tmp/fw.bin; "
                        "latchkey ota device add ct-dev-%s --model %s --version 1.0 --token %s"
                        % (model, model, model, token)],
                       input=fw, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    out = docker("exec", cid, "latchkey", "ota", "list", "--model", model, "--json").stdout
    assert json.loads(out)[0]["sha256"] == sha
    docker("exec", cid, "test", "-s", "/var/lib/latchkey/firmware/%s/%s" % (sha[:2], sha))
    url = "http://127.0.0.1:%d/ota/images/%s" % (OTA_PORT, sha)
    # ota-distributor re-reads its image list every 3 s: 404 until then
    r = wait_until(lambda: (lambda cb: cb if cb[0] != 404 else None)(
        curl("-u", token + ":", "-r", "1000-65535", url)), 30, "the image served", interval=0.5)
    code, body = r
    assert code == 206 and body == fw[1000:65536], (code, len(body))
    assert curl(url)[0] == 401  # no credential
    assert curl("-u", "tok-unknown:", url)[0] == 401
    code, body = curl("-u", token + ":", "-r", "65536-", url)
    assert code == 206 and body == fw[65536:]
    code, body = curl("-u", token + ":", url)
    assert code == 200 and hashlib.sha256(body).hexdigest() == sha
    assert curl("-u", token + ":", "-r", "%d-" % (len(fw) + 10), url)[0] == 416
