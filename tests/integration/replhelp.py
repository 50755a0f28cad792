"""replhelp: what the replica tests (test_57_netns, test_58_replica_kill) share.

- replicas_from_env(default): the replica counts, {"auth": 2, ...}, from
  LATCHKEY_TEST_REPLICAS (latchkey-up's LATCHKEY_REPLICAS syntax, e.g. "router=2
  session-store=2 auth=2 lock-arbiter=2 history-writer=2"), else from default.
- QoS1Load: pairs of paho clients (a persistent-session QoS 1 subscriber and a publisher
  per pair, reconnecting by themselves) that publish at a bounded rate and record what was
  acknowledged (PUBACK) and when each message arrived: lost() = acknowledged, never
  received; gap(t0, t1) = the longest time without a new message on one pair around a
  fault.
- ConnectProbe: a fresh CONNECT every `every` seconds (each in its own thread, so one
  that waits does not delay the next), recording the CONNACK code or the error.

Every wait is bounded. The clients connect to (host, port): 127.0.0.1 for a normal stack,
a namespace's address in test_57 (the threads are started inside that namespace).
"""

import os
import socket
import threading
import time

import paho.mqtt.client as mqtt

import lk
import mqttraw

DEFAULT_REPLICAS = "router=2 session-store=2 auth=2 lock-arbiter=2 history-writer=2"


def _acked(info):
    """PUBACK received for this publish (is_published() raises for a message published
    while disconnected, which paho keeps and sends after its reconnect)"""
    return info._published


def parse_replicas(text):
    out = {}
    for kv in text.split():
        k, _, v = kv.partition("=")
        if not k or not v.isdigit() or int(v) < 1:
            raise ValueError("replica count %r: expected <service>=<number >= 1>" % kv)
        out[k] = int(v)
    return out


def replicas_from_env(default=DEFAULT_REPLICAS):
    return parse_replicas(os.environ.get("LATCHKEY_TEST_REPLICAS") or default)


class QoS1Load:
    """pairs x (publisher -> persistent subscriber) on topic <prefix>/<i>, QoS 1, `rate`
    messages a second per pair. start(), then stop_publishing(), then drain()."""

    def __init__(self, host, port, prefix, pairs=4, rate=25.0, connect_timeout=20):
        self.host, self.port, self.prefix = host, port, prefix
        self.pairs, self.rate, self.connect_timeout = pairs, rate, connect_timeout
        self.lock = threading.Lock()
        self.sent = [[] for _ in range(pairs)]         # [(seq, MQTTMessageInfo)]
        self.sent_t = [[] for _ in range(pairs)]       # when each was published
        self.arrivals = [[] for _ in range(pairs)]     # [(t, seq)] first copies only
        self.seen = [set() for _ in range(pairs)]
        self.dups = 0
        self.disconnects = 0
        self.subs, self.pubs = [], []
        self._stop = threading.Event()
        self._thread = None

    def _client(self, cid, clean, on_message=None):
        c = mqtt.Client(client_id=cid, clean_session=clean, protocol=mqtt.MQTTv311)
        c.reconnect_delay_set(0.1, 0.5)
        c.max_inflight_messages_set(20)
        connected = threading.Event()

        def on_connect(client, userdata, flags, rc):
            if rc == 0:
                connected.set()

        def on_disconnect(client, userdata, rc):
            if rc != 0:
                with self.lock:
                    self.disconnects += 1

        c.on_connect = on_connect
        c.on_disconnect = on_disconnect
        if on_message:
            c.on_message = on_message
        c.connect(self.host, self.port, 10)
        c.loop_start()
        if not connected.wait(self.connect_timeout):
            c.loop_stop()
            raise TimeoutError("%s: no CONNACK from %s:%d within %ss"
                               % (cid, self.host, self.port, self.connect_timeout))
        return c

    def _on_message(self, i):
        def cb(client, userdata, m):
            seq = int(m.payload.split(b":")[1])
            t = time.monotonic()
            with self.lock:
                if seq in self.seen[i]:
                    self.dups += 1
                else:
                    self.seen[i].add(seq)
                    self.arrivals[i].append((t, seq))
        return cb

    def start(self):
        for i in range(self.pairs):
            s = self._client("%s-s%d" % (self.prefix.replace("/", "-"), i), False,
                             self._on_message(i))
            subacked = threading.Event()
            s.on_subscribe = lambda client, userdata, mid, granted, ev=subacked: ev.set()
            # QoS 1 and a persistent session: what it misses while away is kept
            rc, mid = s.subscribe("%s/%d" % (self.prefix, i), 1)
            assert rc == mqtt.MQTT_ERR_SUCCESS
            if not subacked.wait(self.connect_timeout):
                raise TimeoutError("load subscriber %d: no SUBACK" % i)
            self.subs.append(s)
        for i in range(self.pairs):
            self.pubs.append(self._client("%s-p%d" % (self.prefix.replace("/", "-"), i), True))
        self._thread = threading.Thread(target=self._publish_loop, daemon=True)
        self._thread.start()
        return self

    def _publish_loop(self):
        seq = 1
        period = 1.0 / self.rate
        nxt = time.monotonic()
        while not self._stop.is_set():
            for i, p in enumerate(self.pubs):
                t = time.monotonic()
                info = p.publish("%s/%d" % (self.prefix, i), b"p:%d" % seq, 1)
                with self.lock:
                    self.sent[i].append((seq, info))
                    self.sent_t[i].append(t)
            seq += 1
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                nxt = time.monotonic()

    def stop_publishing(self):
        self._stop.set()
        if self._thread:
            self._thread.join(10)

    def acked(self, i):
        return {seq for seq, info in self.sent[i] if _acked(info)}

    def acked_sent_after(self, t):
        """how many messages published after t are acknowledged now"""
        with self.lock:
            return sum(1 for i in range(self.pairs)
                       for (seq, info), ts in zip(self.sent[i], self.sent_t[i])
                       if ts > t and _acked(info))

    def sent_after(self, t):
        with self.lock:
            return sum(1 for i in range(self.pairs) for ts in self.sent_t[i] if ts > t)

    def published(self):
        return sum(len(s) for s in self.sent)

    def lost(self):
        """{pair: sorted acknowledged seqs never received}"""
        with self.lock:
            return {i: sorted(self.acked(i) - self.seen[i]) for i in range(self.pairs)
                    if self.acked(i) - self.seen[i]}

    def drain(self, timeout=30):
        """waits until every publish is acknowledged and every acknowledged message
        arrived (or timeout); returns lost()."""
        def done():
            with self.lock:
                pending = sum(1 for i in range(self.pairs) for seq, info in self.sent[i]
                              if not _acked(info))
            return pending == 0 and not self.lost()
        try:
            lk.wait_until(done, timeout, interval=0.2, what="load drained")
        except TimeoutError:
            pass
        return self.lost()

    def unacked(self):
        return sum(1 for i in range(self.pairs) for seq, info in self.sent[i]
                   if not _acked(info))

    def received(self):
        with self.lock:
            return sum(len(s) for s in self.seen)

    def gap(self, t0, t1):
        """the longest time one pair went without a new message, over the gaps that
        overlap [t0, t1] (a fault at t0, watched until t1)"""
        worst = 0.0
        with self.lock:
            for arr in self.arrivals:
                ts = sorted(t for t, _ in arr)
                prev = None
                for t in ts:
                    if prev is not None and t >= t0 and prev <= t1:
                        worst = max(worst, t - prev)
                    prev = t
                # nothing arrived after t0 on this pair: stopped until t1 at least
                if ts and ts[-1] < t0:
                    worst = max(worst, t1 - ts[-1])
        return worst

    def last_arrival(self):
        with self.lock:
            return max((arr[-1][0] for arr in self.arrivals if arr), default=0.0)

    def close(self):
        self._stop.set()
        for c in self.subs + self.pubs:
            try:
                c.disconnect()
            except Exception:
                pass
            c.loop_stop()


def raw_connack(host, port, cid, timeout):
    """CONNECT (3.1.1, clean) and the CONNACK's return code; raises OSError/TimeoutError."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(mqttraw.connect(cid, keepalive=10))
        buf = b""
        while len(buf) < 4:
            chunk = s.recv(4 - len(buf))
            if not chunk:
                raise ConnectionResetError("closed before CONNACK")
            buf += chunk
        if buf[0] != 0x20:
            raise OSError("not a CONNACK: %r" % buf)
        try:
            s.sendall(mqttraw.packet(0xE0, b""))
        except OSError:
            pass
        return buf[3]


class ConnectProbe:
    """A CONNECT every `every` s until stop(); results [(t_start, t_end, rc or error)]."""

    def __init__(self, host, port, prefix, every=0.1, timeout=10):
        self.host, self.port, self.prefix = host, port, prefix
        self.every, self.timeout = every, timeout
        self.results = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []
        self._main = None

    def _one(self, n):
        t0 = time.monotonic()
        try:
            rc = raw_connack(self.host, self.port, "%s-%d" % (self.prefix, n), self.timeout)
        except (OSError, socket.timeout) as e:
            rc = "%s: %s" % (type(e).__name__, e)
        with self.lock:
            self.results.append((t0, time.monotonic(), rc))

    def _loop(self):
        n = 0
        while not self._stop.wait(self.every):
            t = threading.Thread(target=self._one, args=(n,), daemon=True)
            t.start()
            self._threads.append(t)
            n += 1

    def start(self):
        self._main = threading.Thread(target=self._loop, daemon=True)
        self._main.start()
        return self

    def stop(self):
        self._stop.set()
        if self._main:
            self._main.join(5)
        for t in self._threads:
            t.join(self.timeout + 5)
        return self.results

    def refused(self):
        with self.lock:
            return [r for r in self.results if r[2] != 0]

    def slowest(self):
        with self.lock:
            return max((r[1] - r[0] for r in self.results if r[2] == 0), default=0.0)
