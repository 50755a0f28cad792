"""52: back-pressure instead of loss. With the router stopped, a publisher flooding QoS 1
messages is slowed down by TCP: the frontend stops reading it once router_backlog_bytes
(16 MiB) of unacknowledged work waits, so what it accepts and its memory stay bounded.
When the router is back, every message the publisher got onto the wire reaches the
persistent subscriber."""
import os
import socket
import struct
import subprocess
import time

import pytest

import lk
import mqttraw as raw

# large messages: the stall comes long before the session's max_queued_messages (1000),
# past which the session store drops by its documented policy
PAYLOAD = 48 * 1024


@pytest.fixture(autouse=True)
def _need(stack):
    stack.require("router", "session-store", "auth", "mqtt-frontend-1", "mqtt-frontend-2")


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_publisher_is_slowed_not_dropped(stack):
    sub = lk.paho_client(stack, "bp-sub", clean_session=False)
    sub.subscribe("bp/flood", 1)
    pub = raw.Conn(stack.mqtt_port)
    pub.send(raw.connect("bp-pub", version=4))
    assert pub.read_packet()[0] == 2
    scan = os.path.join(stack.run_dir, "scan", "router")
    subprocess.run(["s6-svc", "-d", scan], check=True, timeout=10)
    try:
        pub.s.setblocking(False)
        sent_bytes, complete, stalled_since = 0, 0, None
        pending = b""
        pid = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sent_bytes < 64 << 20 and complete < 900:
            if not pending:
                pid = pid % 65535 + 1
                body = b"%08d" % (complete + 1) + b"x" * (PAYLOAD - 8)
                pending = raw.publish("bp/flood", body, qos=1, pid=pid)
            try:
                n = pub.s.send(pending)
            except BlockingIOError:
                n = 0
            if n:
                sent_bytes += n
                pending = pending[n:]
                if not pending:
                    complete += 1
                stalled_since = None
            else:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 2:
                    break       # TCP pushes back: the frontend stopped reading us
                time.sleep(0.01)
        assert stalled_since is not None, "the frontend kept reading %d bytes" % sent_bytes
        assert sent_bytes < 48 << 20, "accepted %d bytes with the router down" % sent_bytes
        fe_rss = [rss_kb(stack.svc_pid(s)) for s in ("mqtt-frontend-1", "mqtt-frontend-2")]
        assert max(fe_rss) < 200 * 1024, fe_rss
    finally:
        subprocess.run(["s6-svc", "-u", scan], check=True, timeout=10)
    stack.wait_up("router")
    # finish the message cut in the middle, then every complete one must arrive
    pub.s.setblocking(True)
    if pending:
        pub.s.sendall(pending)
        complete += 1
    got = set()
    t_end = time.monotonic() + 60
    while len(got) < complete and time.monotonic() < t_end:
        for m in sub.messages.drain(quiet=1.0, timeout=5):
            got.add(m.payload[:8])
    pub.close()
    sub.disconnect()
    lk.paho_client(stack, "bp-sub", clean_session=True).disconnect()
    assert len(got) == complete, "%d of %d messages arrived" % (len(got), complete)
