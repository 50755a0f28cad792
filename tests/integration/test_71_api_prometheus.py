"""71: a real Prometheus (the Debian package) scrapes the api's /metrics; a PromQL query
answers the number of connected clients, and follows when clients connect."""

import json
import os
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
import uuid

import pytest

import apihelp
import lk

RUN = uuid.uuid4().hex[:6]


def promql(port, q):
    url = "http://127.0.0.1:%d/api/v1/query?%s" % (port, urllib.parse.urlencode({"query": q}))
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.fixture(scope="module")
def prometheus(stack):
    stack.require("api", "mqtt-frontend-1", "mqtt-frontend-2")
    exe = shutil.which("prometheus")
    if not exe:
        pytest.skip("prometheus is not installed (supervise/install-deps)")
    d = tempfile.mkdtemp(prefix="lk-prom-", dir=stack.run_dir)
    port = lk.free_port({stack.api_port})
    with open(os.path.join(d, "prometheus.yml"), "w") as f:
        f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                "scrape_configs:\n  - job_name: latchkey\n    static_configs:\n"
                "      - targets: ['127.0.0.1:%d']\n" % stack.api_port)
    log = open(os.path.join(d, "prometheus.log"), "w")
    p = subprocess.Popen([exe, "--config.file=" + os.path.join(d, "prometheus.yml"),
                          "--storage.tsdb.path=" + os.path.join(d, "data"),
                          "--web.listen-address=127.0.0.1:%d" % port],
                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        lk.wait_until(lambda: _ready(port), 60, 0.5, what="prometheus ready")
        yield port
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        log.close()


def _ready(port):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/-/ready" % port, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_promql_connected_clients(stack, prometheus):
    key, secret = apihelp.new_key(stack, "t71")
    api = apihelp.Api(stack, key, secret)
    # the api's target is up and its series arrive
    lk.wait_until(lambda: [r for r in promql(prometheus, 'up{job="latchkey"}')
                           if r["value"][1] == "1"], 30, 0.5, what="target up")
    q = 'sum(latchkey_connections{kind="mqtt-frontend"})'
    base = lk.wait_until(lambda: promql(prometheus, q), 30, 0.5, what="connections series")
    n = 5
    cs = [lk.paho_client(stack, "prom-%s-%d" % (RUN, i)) for i in range(n)]
    try:
        want = api.get("/api/v5/stats?aggregate=true")[1]["connections.count"]
        assert want >= n
        # PromQL answers what the api says, once a scrape has seen the new clients
        lk.wait_until(lambda: float(promql(prometheus, q)[0]["value"][1]) == want, 30, 0.5,
                      what="PromQL sum == %d (was %s)" % (want, base[0]["value"][1]))
        per_node = promql(prometheus, 'latchkey_connections{kind="mqtt-frontend"}')
        assert {r["metric"]["node"] for r in per_node} == {"fe-1", "fe-2"}
        # other documented series are there too
        for name in ("latchkey_subscriptions", "latchkey_retained_messages",
                     "latchkey_messages_received_total", "latchkey_bus_unacked_bytes",
                     "latchkey_redis_rtt_seconds", "latchkey_lock_decisions_total",
                     "latchkey_process_resident_memory_bytes"):
            assert promql(prometheus, name), name
    finally:
        for c in cs:
            c.disconnect()
    lk.wait_until(lambda: float(promql(prometheus, q)[0]["value"][1]) <= want - n, 30, 0.5,
                  what="PromQL follows the disconnects")
