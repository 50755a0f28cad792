#!/usr/bin/python3
"""fault: the bounded fault test of issue 5 (DESIGN.md §4 guarantee 2).

One run per service: publishers at QoS 1 and 2 and persistent-session subscribers (clean
session off, fixed client ids, QoS 1 and 2 subscriptions to every publisher's topic) run
through the whole stack while the service is killed with SIGKILL (s6-svc -k) a few times.
Then publishing stops, the publishers get a bounded time to have everything acknowledged,
the subscribers a bounded time to receive it, and every subscriber disconnects and connects
once more to collect what the session store kept. One line per run:

    fault <svc>: sent N acked N received N lost N duplicated N

sent: PUBLISH calls; acked: distinct messages PUBACKed (QoS 1) or PUBCOMPed (QoS 2), each
meant for every subscriber; received: messages the subscribers got (with duplicates);
lost: sum over subscribers of acknowledged messages never received (must be 0);
duplicated: received - distinct received. A second line gives the details: unacked (sent,
never acknowledged), late (acknowledged, received only through the final reconnect: stuck
in the session store meanwhile), publisher drops, subscriber connects, sessions found
missing, duplicates without DUP (and those of them that the broker re-delivered, from
publishers that never dropped), kill-to-ready times, clients a killed frontend held.
On a loss it also prints the services' warnings and errors.

Usage:
    tests/fault/fault.py [--size small|large] [--services "router auth ..."] [--attach RUN_DIR]
Without --attach it starts its own stack (tests/integration/lk.py, build from
LATCHKEY_BUILD, default build/) and stops it at the end; with --attach it drives a stack
already running (`make run`: RUN_DIR=run) whose ports it reads from RUN_DIR/env. Exit 0 when
nothing was lost in any run, 1 otherwise. tests/integration/test_50_fault.py runs it in
`make test` (small; LATCHKEY_FAULT=large for the large size).

Every wait is bounded: the load by its duration and the number of messages, the drains by
fixed deadlines, each kill by s6-svlisten1's timeout.
"""

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
import lk  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402

SERVICES = ["router", "session-store", "auth", "mqtt-frontend-1", "mqtt-frontend-2", "redis",
            "lock-arbiter", "history-writer"]

# publishers, subscribers, messages a second per publisher, load seconds, kills per run,
# acknowledgement window per publisher
SIZES = {
    "small": dict(pubs=4, subs=4, rate=40, duration=7.0, kills=2, window=20),
    "large": dict(pubs=6, subs=6, rate=80, duration=60.0, kills=8, window=20),
}
ACK_DRAIN_S = 25.0      # after the load: time for every publish to be acknowledged
RECV_DRAIN_S = 25.0     # then: time for every subscriber to have every acked message
QUIET_S = 3.0           # a drain ends early after this long without progress ...
COLLECT_S = 15.0        # ... and the final reconnect-and-collect takes at most this long
CONNECT_S = 15.0


class Publisher:
    """One paho client publishing "<pub>:<seq>" to its own topic at a fixed QoS and rate,
    with at most `window` messages not yet acknowledged. paho reconnects by itself and
    re-sends what was not acknowledged (with DUP)."""

    def __init__(self, port, run_id, idx, qos, rate, window):
        self.port = port
        self.name = "p%d" % idx
        self.topic = "fault/%s/%s" % (run_id, self.name)
        self.qos = qos
        self.rate = rate
        self.window = window
        self.sent = 0
        self.acked = set()
        self.pending = {}           # mid -> seq, published and not yet acknowledged
        self.early = set()          # mids acknowledged before publish() returned
        self.disconnects = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = None
        self.c = mqtt.Client(client_id="fault-%s-%s" % (run_id, self.name), clean_session=True)
        self.c.max_inflight_messages_set(window)
        self.c.reconnect_delay_set(0.2, 1.0)
        self.c.on_publish = self._on_publish
        self.c.on_disconnect = self._on_disconnect
        self.connected = threading.Event()
        self.c.on_connect = lambda c, u, f, rc: rc == 0 and self.connected.set()

    def _on_publish(self, client, userdata, mid):
        with self.lock:
            seq = self.pending.pop(mid, None)
            if seq is None:
                self.early.add(mid)
            else:
                self.acked.add(seq)

    def _on_disconnect(self, client, userdata, rc):
        if rc != 0:
            with self.lock:
                self.disconnects += 1

    def start(self):
        self.c.connect_async("127.0.0.1", self.port, keepalive=10)
        self.c.loop_start()
        if not self.connected.wait(CONNECT_S):
            raise TimeoutError("publisher %s: no CONNACK within %ss" % (self.name, CONNECT_S))
        self.thread = threading.Thread(target=self._run, name="pub-" + self.name, daemon=True)
        self.thread.start()

    def outstanding(self):
        with self.lock:
            return len(self.pending)

    def _run(self):
        interval = 1.0 / self.rate
        next_t = time.monotonic()
        seq = 0
        while not self.stop.is_set():
            if self.outstanding() >= self.window:
                time.sleep(0.005)
                continue
            now = time.monotonic()
            if now < next_t:
                time.sleep(min(next_t - now, 0.05))
                continue
            next_t += interval
            if next_t < now - 1.0:
                next_t = now   # do not burst to catch up after a stall
            seq += 1
            # not under self.lock: paho calls on_publish holding its own message lock,
            # which publish() takes too
            info = self.c.publish(self.topic, "%s:%d" % (self.name, seq), self.qos)
            with self.lock:
                self.sent += 1
                if info.mid in self.early:
                    self.early.discard(info.mid)
                    self.acked.add(seq)
                else:
                    self.pending[info.mid] = seq

    def halt(self):
        self.stop.set()
        if self.thread:
            self.thread.join(5)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


class Subscriber:
    """A persistent-session client (clean session off, fixed id) subscribed to every
    publisher of the run at `qos`. paho reconnects it when dropped; a CONNACK without a
    session present after the first one means the session was lost: counted, and the
    subscription made again so that the run goes on measuring."""

    def __init__(self, port, run_id, idx, qos):
        self.port = port
        self.run_id = run_id
        self.client_id = "fault-%s-s%d" % (run_id, idx)
        self.filter = "fault/%s/+" % run_id
        self.qos = qos
        self.lock = threading.Lock()
        self.got = {}               # "p0:17" -> number of copies
        self.total = 0
        self.dup_without_flag = 0
        self.dup_broker_no_flag = []   # candidates, kept when their publisher never dropped
        self.connects = 0
        self.sessions_lost = 0
        self.last_rx = time.monotonic()
        self.subscribed = threading.Event()
        self.c = None

    def _new_client(self):
        c = mqtt.Client(client_id=self.client_id, clean_session=False)
        c.reconnect_delay_set(0.2, 1.0)
        c.max_inflight_messages_set(100)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_subscribe = lambda cl, u, mid, granted: self.subscribed.set()
        return c

    def _on_connect(self, client, userdata, flags, rc):
        if rc != 0:
            return
        with self.lock:
            self.connects += 1
            first = self.connects == 1
            if not flags.get("session present") and not first:
                self.sessions_lost += 1
        if first or not flags.get("session present"):
            client.subscribe(self.filter, self.qos)

    def _on_message(self, client, userdata, m):
        key = m.payload.decode("ascii", "replace")
        with self.lock:
            n = self.got.get(key, 0)
            if n and not m.dup:
                self.dup_without_flag += 1
                # a publisher that never dropped sent each message once: a copy without
                # DUP of one of its messages is the broker's re-delivery, which MQTT says
                # must carry DUP [MQTT-3.3.1-1]
                self.dup_broker_no_flag.append(key)
            self.got[key] = n + 1
            self.total += 1
            self.last_rx = time.monotonic()

    def start(self):
        self.c = self._new_client()
        self.c.connect_async("127.0.0.1", self.port, keepalive=10)
        self.c.loop_start()
        if not self.subscribed.wait(CONNECT_S):
            raise TimeoutError("subscriber %s: no SUBACK within %ss" % (self.client_id, CONNECT_S))

    def missing(self, expected):
        with self.lock:
            return sum(1 for k in expected if k not in self.got)

    def reconnect(self):
        """A clean DISCONNECT (the session stays), then a new connection that collects
        what the session store kept."""
        self.c.disconnect()
        self.c.loop_stop()
        self.c = self._new_client()
        connected = threading.Event()
        orig = self.c.on_connect

        def on_connect(client, userdata, flags, rc):
            orig(client, userdata, flags, rc)
            if rc == 0:
                connected.set()

        self.c.on_connect = on_connect
        self.c.connect_async("127.0.0.1", self.port, keepalive=10)
        self.c.loop_start()
        if not connected.wait(CONNECT_S):
            raise TimeoutError("subscriber %s: no CONNACK on the final reconnect"
                               % self.client_id)

    def end(self, port):
        """Stops, then removes the persistent session (a clean-session connect) so that
        runs do not pile sessions up in a shared stack."""
        self.c.disconnect()
        self.c.loop_stop()
        try:
            c = lk.paho_client(port, self.client_id, clean_session=True, timeout=10)
            c.disconnect()
        except Exception:
            pass


def _held_by(stack, svc, clients):
    """The paho clients whose connection is on service svc (a frontend), from the kernel's
    socket table (ss): the local port of each client's socket is matched with the
    established connections of svc's process. None when that cannot be told."""
    try:
        pid = stack.svc_pid(svc)
        out = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError, lk.StackError):
        return None
    ports = set()
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[2].endswith(":%d" % stack.mqtt_port) \
                and ("pid=%d," % pid) in line:
            ports.add(cols[3].rsplit(":", 1)[1])
    held = []
    for c in clients:
        try:
            sock = c.socket()
            if sock is not None and str(sock.getsockname()[1]) in ports:
                held.append(c)
        except (OSError, AttributeError):
            pass
    return held


def _rebalance(stack, svc, clients, timeout=4.0):
    """Before a frontend's kill: clients dropped by an earlier kill reconnected to the other
    frontend (the only one listening then), so move some back. Drops the connection (socket
    shutdown, as a network failure would) of clients held elsewhere until at least a third
    are on svc; paho reconnects them to either frontend. Returns how many svc holds."""
    want = max(1, len(clients) // 3)
    deadline = time.monotonic() + timeout
    while True:
        held = _held_by(stack, svc, clients)
        if held is None:
            return -1
        if len(held) >= want or time.monotonic() >= deadline:
            return len(held)
        for c in [c for c in clients if c not in held][:want - len(held)]:
            try:
                sock = c.socket()
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        time.sleep(0.8)


def _wait_stack_up(stack, timeout=30):
    deadline = time.monotonic() + timeout
    for svc in stack.services:
        stack.wait_up(svc, max(1.0, deadline - time.monotonic()))


def run_one(stack, svc, size="small", log=print):
    """One run: load, `kills` SIGKILLs of svc spread over it, drains, final collect.
    Returns a dict of the figures (see the module's doc)."""
    p = SIZES[size]
    port = stack.mqtt_port
    run_id = "%s-%s" % (svc.replace("mqtt-frontend-", "fe"), uuid.uuid4().hex[:6])
    _wait_stack_up(stack)
    t0 = time.monotonic()
    subs = [Subscriber(port, run_id, i, 1 + i % 2) for i in range(p["subs"])]
    pubs = [Publisher(port, run_id, i, 1 + i % 2, p["rate"], p["window"])
            for i in range(p["pubs"])]
    kill_times = []
    missing_before = 0
    held = []       # for a frontend: clients it held at each kill
    try:
        for s in subs:
            s.start()
        for pb in pubs:
            pb.start()
        # the kills, evenly spread; stack.kill waits until s6 has it up and ready again
        gap = p["duration"] / (p["kills"] + 1)
        for k in range(p["kills"]):
            target = t0 + gap * (k + 1)
            time.sleep(max(0.0, target - time.monotonic()))
            if svc.startswith("mqtt-frontend"):
                held.append(_rebalance(stack, svc, [x.c for x in subs + pubs]))
            tk = time.monotonic()
            stack.kill(svc)
            kill_times.append(round(time.monotonic() - tk, 2))
        time.sleep(max(0.0, t0 + p["duration"] - time.monotonic()))
        for pb in pubs:
            pb.halt()
        t_load = time.monotonic() - t0

        # every publish acknowledged (bounded)
        deadline = time.monotonic() + ACK_DRAIN_S
        while time.monotonic() < deadline and any(pb.outstanding() for pb in pubs):
            time.sleep(0.1)
        acked_keys = set()
        for pb in pubs:
            with pb.lock:
                acked_keys.update("%s:%d" % (pb.name, q) for q in pb.acked)

        # every acked message received by every subscriber, or no progress for QUIET_S
        deadline = time.monotonic() + RECV_DRAIN_S
        while time.monotonic() < deadline:
            if all(s.missing(acked_keys) == 0 for s in subs):
                break
            if all(time.monotonic() - s.last_rx > QUIET_S for s in subs):
                break
            time.sleep(0.2)

        # one more connection per subscriber: what the session store kept comes now
        missing_before = sum(s.missing(acked_keys) for s in subs)
        for s in subs:
            s.reconnect()
        deadline = time.monotonic() + COLLECT_S
        time.sleep(0.5)
        while time.monotonic() < deadline:
            if all(s.missing(acked_keys) == 0 for s in subs) and \
                    all(time.monotonic() - s.last_rx > 1.0 for s in subs):
                break
            if all(time.monotonic() - s.last_rx > QUIET_S for s in subs):
                break
            time.sleep(0.2)
    finally:
        for pb in pubs:
            pb.halt()
            try:
                pb.close()
            except Exception:
                pass
        for s in subs:
            if s.c is not None:
                s.end(port)

    r = dict(svc=svc, sent=sum(pb.sent for pb in pubs), acked=len(acked_keys))
    r["received"] = sum(s.total for s in subs)
    r["unique"] = sum(len(s.got) for s in subs)
    r["duplicated"] = r["received"] - r["unique"]
    r["lost"] = sum(s.missing(acked_keys) for s in subs)
    r["lost_detail"] = {s.client_id: sorted(k for k in acked_keys if k not in s.got)[:10]
                        for s in subs if s.missing(acked_keys)}
    r["unacked"] = r["sent"] - r["acked"]
    # acknowledged, not received while connected, and collected only by the final
    # reconnect: stuck in the session store (a delivery path that stalled)
    r["late"] = max(0, missing_before - r["lost"])
    r["pub_disconnects"] = sum(pb.disconnects for pb in pubs)
    r["sub_connects"] = sum(s.connects for s in subs)
    r["sessions_lost"] = sum(s.sessions_lost for s in subs)
    r["dup_without_flag"] = sum(s.dup_without_flag for s in subs)
    dropped = {pb.name for pb in pubs if pb.disconnects}
    r["broker_dup_without_flag"] = sum(1 for s in subs for k in s.dup_broker_no_flag
                                       if k.split(":", 1)[0] not in dropped)
    r["kill_s"] = kill_times
    r["load_s"] = round(t_load, 1)
    r["total_s"] = round(time.monotonic() - t0, 1)
    r["subs"] = len(subs)
    r["held"] = held
    log(format_line(r))
    log("  %s: subscribers %d, unacked %d, late %d, publisher drops %d, subscriber connects %d, "
        "sessions lost %d, dup without DUP %d (broker re-deliveries %d), kills back in %s s%s, load %.1fs, run %.1fs"
        % (svc, r["subs"], r["unacked"], r["late"], r["pub_disconnects"], r["sub_connects"],
           r["sessions_lost"], r["dup_without_flag"], r["broker_dup_without_flag"], r["kill_s"],
           " (clients held %s)" % held if held else "", r["load_s"], r["total_s"]))
    if r["lost"]:
        log("  %s: first lost messages per subscriber: %r" % (svc, r["lost_detail"]))
        # what the services said meanwhile: their warnings and errors, last ones first
        for name in stack.services:
            lines = [ln for ln in stack.log(name).splitlines()
                     if ": warning:" in ln or ": error:" in ln or "Sanitizer" in ln]
            if lines:
                log("  log of %s (%d warnings/errors, last 8):" % (name, len(lines)))
                for ln in lines[-8:]:
                    log("    " + ln)
    return r


def format_line(r):
    """ The one-line summary of a run; `acked` counts each message once (it is meant for
    every subscriber), `received`/`lost`/`duplicated` are summed over subscribers."""
    return "fault %s: sent %d acked %d received %d lost %d duplicated %d" % (
        r["svc"], r["sent"], r["acked"], r["received"], r["lost"], r["duplicated"])


class _Attached(lk.Stack):
    """A stack started elsewhere (`make run`), known by its run folder's env file."""

    def __init__(self, run_dir):
        env = {}
        with open(os.path.join(run_dir, "env")) as f:
            for line in f:
                line = line.strip()
                if line.startswith("export "):
                    line = line[len("export "):]
                if "=" in line:
                    k, v = line.split("=", 1)
                    env[k] = v.strip("'\"")
        super().__init__(services=env.get("LATCHKEY_SERVICES", "").replace("\\", "").split()
                         or None, run_dir=run_dir)
        self.mqtt_port = int(env["MQTT_PORT"])
        self.redis_port = int(env["REDIS_PORT"])
        self.pg_port = int(env["PG_PORT"])
        self.running = True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default=os.environ.get("LATCHKEY_FAULT", "small"),
                    choices=sorted(SIZES))
    ap.add_argument("--services", default=" ".join(SERVICES))
    ap.add_argument("--attach", metavar="RUN_DIR")
    a = ap.parse_args()
    stack = _Attached(a.attach) if a.attach else lk.Stack()
    if not a.attach:
        stack.start_all()
    results = []
    try:
        for svc in a.services.split():
            if not stack.has(svc):
                print("fault %s: not running in this stack, skipped" % svc)
                continue
            results.append(run_one(stack, svc, a.size, log=lambda s: print(s, flush=True)))
    finally:
        if not a.attach:
            stack.destroy()
    lost = sum(r["lost"] for r in results)
    print("fault: %d runs, %d lost" % (len(results), lost))
    return 1 if lost or not results else 0


if __name__ == "__main__":
    sys.exit(main())
