"""70: the api process — EMQX 5 REST under /api/v5 (clients, subscriptions, topics,
retained, bans, publish, stats, metrics, nodes), API keys, errors. Clients are real
(paho-mqtt, mosquitto_sub) on both frontends; the api gathers every node's answer over the
bus, so each list is cluster-wide."""

import base64
import json
import time
import uuid

import pytest

import apihelp
import lk
from lockhelp import cli, mqtt_account

RUN = uuid.uuid4().hex[:6]


@pytest.fixture(scope="module")
def api(stack):
    stack.require("api", "mqtt-frontend-1", "mqtt-frontend-2", "router", "session-store", "auth")
    key, secret = apihelp.new_key(stack, "t70")
    a = apihelp.Api(stack, key, secret)
    # the api finds the frontends through the router within a second or two
    lk.wait_until(lambda: len([n for n in a.get("/api/v5/nodes")[1]
                               if n["kind"] == "mqtt-frontend" and n["node_status"] == "running"])
                  == 2, 15, what="both frontends in /nodes")
    return a


def client(stack, cid, **kw):
    c = lk.paho_client(stack, cid, **kw)
    c.paho.reconnect_delay_set(30, 60)  # a kicked client stays away while we look
    return c


def nodes_of(api, ids):
    st, body, _ = api.get("/api/v5/clients?limit=10000")
    assert st == 200
    return {c["clientid"]: c["node"] for c in body["data"] if c["clientid"] in ids}


@pytest.fixture(scope="module")
def fleet(stack, api):
    """Clients until both frontends hold some (the kernel spreads SO_REUSEPORT)."""
    cs = []
    for i in range(40):
        cs.append(client(stack, "fl-%s-%02d" % (RUN, i)))
        if i >= 3:
            n = nodes_of(api, {c.client_id for c in cs})
            if len(n) == len(cs) and len(set(n.values())) == 2:
                break
    else:
        pytest.fail("40 clients and still not on both frontends")
    yield cs
    for c in cs:
        c.close()


# ---- API keys ----------------------------------------------------------------------------
def test_auth(stack, api):
    st, body, hdrs = api.get("/api/v5/clients", auth=False)
    assert st == 401 and body["code"] == "BAD_API_KEY_OR_SECRET"
    assert "Basic" in hdrs.get("WWW-Authenticate", "")
    bad = apihelp.Api(stack, api.key, api.secret + "x")
    assert bad.get("/api/v5/clients")[0] == 401
    assert apihelp.Api(stack, "nokey", "x").get("/api/v5/nodes")[0] == 401
    # the secret is stored hashed
    stored = stack.redis_cli("HGET", "lk:apikey:" + api.key, "secret")
    assert stored.startswith("$7$") and api.secret not in stored
    # a removed key stops working (after the api's short cache)
    key, secret = apihelp.new_key(stack, "gone")
    tmp = apihelp.Api(stack, key, secret)
    assert tmp.get("/api/v5/stats")[0] == 200
    assert key in cli(stack, "apikey", "list").stdout
    cli(stack, "apikey", "rm", key)
    lk.wait_until(lambda: tmp.get("/api/v5/stats")[0] == 401, 15, 0.5, what="removed key refused")


def test_curl(stack, api, fleet):
    code, body = apihelp.curl(stack, api.key, api.secret, "/api/v5/clients?limit=1000")
    assert code == 200
    ids = {c["clientid"] for c in json.loads(body)["data"]}
    assert {c.client_id for c in fleet} <= ids
    code, body = apihelp.curl(stack, api.key, "wrong", "/api/v5/clients")
    assert code == 401 and json.loads(body)["code"] == "BAD_API_KEY_OR_SECRET"


# ---- clients -------------------------------------------------------------------------------
def test_clients_cluster_wide(api, fleet):
    n = nodes_of(api, {c.client_id for c in fleet})
    assert set(n.values()) == {"fe-1", "fe-2"}
    st, c, _ = api.get("/api/v5/clients/" + fleet[0].client_id)
    assert st == 200
    for k in ("clientid", "node", "ip_address", "port", "connected", "connected_at",
              "proto_ver", "keepalive", "clean_start", "subscriptions_cnt", "inflight_cnt",
              "mqueue_len", "recv_msg", "send_msg", "recv_oct", "send_oct"):
        assert k in c, k
    assert c["connected"] is True and c["ip_address"] == "127.0.0.1" and c["proto_ver"] == 4
    assert c["keepalive"] == 60 and c["recv_oct"] > 0


def test_paging(api, fleet):
    ids = sorted(c.client_id for c in fleet)
    like = "fl-" + RUN
    st, p1, _ = api.get("/api/v5/clients?like_clientid=%s&limit=2&page=1" % like)
    assert st == 200 and p1["meta"] == {"page": 1, "limit": 2, "count": len(ids), "hasnext": True}
    assert [c["clientid"] for c in p1["data"]] == ids[:2]
    st, p2, _ = api.get("/api/v5/clients?like_clientid=%s&limit=2&page=2" % like)
    assert [c["clientid"] for c in p2["data"]] == ids[2:4]
    last = (len(ids) + 1) // 2
    st, pl, _ = api.get("/api/v5/clients?like_clientid=%s&limit=2&page=%d" % (like, last))
    assert pl["meta"]["hasnext"] is False and len(pl["data"]) == len(ids) - 2 * (last - 1)
    st, empty, _ = api.get("/api/v5/clients?like_clientid=%s&limit=2&page=99" % like)
    assert st == 200 and empty["data"] == [] and empty["meta"]["count"] == len(ids)


def test_filters(stack, api, fleet):
    user = "u70-" + RUN
    pw = mqtt_account(stack, user)
    c5 = client(stack, "v5-" + RUN, protocol=lk.MQTTv5, username=user, password=pw)
    try:
        q = "/api/v5/clients?"
        got = lambda s: [c["clientid"] for c in api.get(q + s)[1]["data"]]  # noqa: E731
        assert got("clientid=" + fleet[1].client_id) == [fleet[1].client_id]
        assert got("username=" + user) == [c5.client_id]
        assert got("proto_ver=5&like_clientid=" + RUN) == [c5.client_id]
        assert len(got("ip_address=127.0.0.1&like_clientid=" + RUN)) == len(fleet) + 1
        assert got("ip_address=10.9.9.9") == []
        assert got("conn_state=connected&clientid=" + c5.client_id) == [c5.client_id]
        assert got("conn_state=disconnected&clientid=" + c5.client_id) == []
        one = api.get("/api/v5/clients/" + c5.client_id)[1]
        assert one["username"] == user and one["proto_ver"] == 5
    finally:
        c5.disconnect()


def test_errors(api):
    for path, code in [("/api/v5/clients?page=0", "BAD_REQUEST"),
                       ("/api/v5/clients?limit=abc", "BAD_REQUEST"),
                       ("/api/v5/clients?limit=10001", "BAD_REQUEST"),
                       ("/api/v5/clients?conn_state=sleepy", "BAD_REQUEST"),
                       ("/api/v5/clients?proto_ver=9", "BAD_REQUEST"),
                       ("/api/v5/subscriptions?qos=3", "BAD_REQUEST"),
                       ("/api/v5/subscriptions?match_topic=a/%23", "BAD_REQUEST")]:
        st, body, _ = api.get(path)
        assert st == 400 and body["code"] == code, (path, st, body)
        assert body["message"]
    st, body, _ = api.get("/api/v5/no/such/thing")
    assert st == 404 and body["code"] == "NOT_FOUND"
    st, body, _ = api.get("/api/v5/clients/nobody-" + RUN)
    assert st == 404 and body["code"] == "CLIENTID_NOT_FOUND"
    assert api.delete("/api/v5/clients/nobody-" + RUN)[0] == 404
    st, body, _ = api.post("/api/v5/publish", raw=b"{not json")
    assert st == 400 and body["code"] == "BAD_REQUEST"
    st, body, _ = api.post("/api/v5/publish", {"topic": "a/+/b", "payload": "x"})
    assert st == 400 and body["code"] == "BAD_TOPIC"
    st, body, _ = api.post("/api/v5/clients/x/subscribe", {"topic": "a/#/b"})
    assert st == 400
    st, body, _ = api.post("/api/v5/banned", {"as": "ipaddr", "who": "x"})
    assert st == 400 and body["code"] == "BAD_REQUEST"
    st, body, _ = api.post("/api/v5/banned", {"as": "clientid", "who": "x",
                                               "until": "2001-01-01T00:00:00Z"})
    assert st == 400


def test_kick(stack, api):
    c = client(stack, "kick-" + RUN)
    assert api.get("/api/v5/clients/" + c.client_id)[0] == 200
    st, _, _ = api.delete("/api/v5/clients/" + c.client_id)
    assert st == 204
    c.wait_disconnected(10)
    c.loop_stop()
    st, body, _ = api.get("/api/v5/clients/" + c.client_id)
    assert st == 404 and body["code"] == "CLIENTID_NOT_FOUND"


def test_kickout_bulk(stack, api):
    cs = [client(stack, "bulk-%s-%d" % (RUN, i)) for i in range(3)]
    st, _, _ = api.post("/api/v5/clients/kickout/bulk", [c.client_id for c in cs[:2]])
    assert st == 204
    for c in cs[:2]:
        c.wait_disconnected(10)
        c.loop_stop()
    assert not cs[2].disconnected.is_set()
    left = [c["clientid"] for c in api.get("/api/v5/clients?like_clientid=bulk-" + RUN)[1]["data"]]
    assert left == [cs[2].client_id]
    assert api.post("/api/v5/clients/kickout/bulk", {"not": "a list"})[0] == 400
    cs[2].disconnect()


def test_persistent_session_cleared(stack, api):
    cid = "pers-" + RUN
    c = client(stack, cid, clean_session=False)
    c.subscribe("pers/%s/#" % RUN, qos=1)
    c.disconnect()
    lk.wait_until(lambda: api.get("/api/v5/clients/" + cid)[1].get("connected") is False, 10,
                  what="session shown disconnected")
    st, body, _ = api.get("/api/v5/clients?conn_state=disconnected&like_clientid=" + cid)
    assert [x["clientid"] for x in body["data"]] == [cid]
    assert "disconnected_at" in body["data"][0]
    # messages queue for it meanwhile
    lk.mosquitto_pub(stack, "pers/%s/a" % RUN, "queued", qos=1)
    lk.wait_until(lambda: api.get("/api/v5/clients/" + cid)[1].get("mqueue_len") == 1, 10,
                  what="queued message counted")
    assert stack.redis_cli("EXISTS", "lk:sess:{%s}" % cid) == "1"
    assert api.delete("/api/v5/clients/" + cid)[0] == 204
    assert stack.redis_cli("EXISTS", "lk:sess:{%s}" % cid) == "0"
    assert api.get("/api/v5/clients/" + cid)[0] == 404
    # the router forgot its subscription too
    subs = api.get("/api/v5/subscriptions?clientid=" + cid)[1]
    assert subs["data"] == []
    # and a reconnect starts with no session
    c2 = client(stack, cid, clean_session=False)
    assert c2.session_present is False
    c2.messages.expect_none(0.5)
    c2.disconnect()


# ---- subscriptions and topics --------------------------------------------------------------
def test_subscriptions(stack, api):
    c = client(stack, "sub-" + RUN, protocol=lk.MQTTv5)
    try:
        c.subscribe("s70/%s/own" % RUN, qos=1)
        st, body, _ = api.post("/api/v5/clients/%s/subscribe" % c.client_id,
                               {"topic": "s70/%s/+/api" % RUN, "qos": 2})
        assert st == 200 and body["topic"] == "s70/%s/+/api" % RUN and body["qos"] == 2
        st, subs, _ = api.get("/api/v5/clients/%s/subscriptions" % c.client_id)
        assert st == 200
        assert sorted((s["topic"], s["qos"]) for s in subs) == [
            ("s70/%s/+/api" % RUN, 2), ("s70/%s/own" % RUN, 1)]
        # the subscription made through the API delivers
        lk.mosquitto_pub(stack, "s70/%s/x/api" % RUN, "via api", qos=1)
        m = c.wait_for(1)[0]
        assert m.payload == b"via api" and m.qos == 1
        # the router's view, filtered
        all_ = api.get("/api/v5/subscriptions?clientid=" + c.client_id)[1]
        assert all_["meta"]["count"] == 2
        assert {s["node"] for s in all_["data"]} <= {"fe-1", "fe-2"}
        t = api.get("/api/v5/subscriptions?topic=s70/%s/own" % RUN)[1]["data"]
        assert [s["clientid"] for s in t] == [c.client_id]
        q2 = api.get("/api/v5/subscriptions?qos=2&clientid=" + c.client_id)[1]["data"]
        assert [s["topic"] for s in q2] == ["s70/%s/+/api" % RUN]
        mt = api.get("/api/v5/subscriptions?match_topic=s70/%s/y/api" % RUN)[1]["data"]
        assert [s["topic"] for s in mt] == ["s70/%s/+/api" % RUN]
        tops = api.get("/api/v5/topics?limit=10000")[1]["data"]
        assert {"topic": "s70/%s/own" % RUN, "node": body["node"]} in tops
        one = api.get("/api/v5/topics?topic=s70/%s/own" % RUN)[1]
        assert one["meta"]["count"] == 1
        # unsubscribe through the API
        st, _, _ = api.post("/api/v5/clients/%s/unsubscribe" % c.client_id,
                            {"topic": "s70/%s/+/api" % RUN})
        assert st == 204
        lk.wait_until(lambda: api.get("/api/v5/subscriptions?clientid=" + c.client_id)[1]
                      ["meta"]["count"] == 1, 10, what="unsubscribed")
        lk.mosquitto_pub(stack, "s70/%s/x/api" % RUN, "not any more", qos=1)
        c.messages.expect_none(0.5)
        assert api.post("/api/v5/clients/nobody-%s/subscribe" % RUN,
                        {"topic": "a", "qos": 0})[0] == 404
    finally:
        c.disconnect()


# ---- retained ----------------------------------------------------------------------------
def test_retained(stack, api):
    topic = "r70/%s/a b" % RUN
    lk.mosquitto_pub(stack, topic, "kept", qos=1, retain=True)
    lk.mosquitto_pub(stack, "r70/%s/other" % RUN, "x", qos=1, retain=True)
    enc = urllib_quote(topic)
    st, one, _ = lk.wait_until(lambda: (lambda r: r if r[0] == 200 else None)(
        api.get("/api/v5/mqtt/retainer/message/" + enc)), 10, what="retained visible")
    assert one["topic"] == topic and base64.b64decode(one["payload"]) == b"kept"
    assert one["qos"] == 1 and one["msgid"]
    st, lst, _ = api.get("/api/v5/mqtt/retainer/messages?limit=10000")
    assert st == 200 and {topic, "r70/%s/other" % RUN} <= {m["topic"] for m in lst["data"]}
    assert "payload" not in lst["data"][0]
    st, lst, _ = api.get("/api/v5/mqtt/retainer/messages?topic=r70/%s/%%23&limit=1" % RUN)
    assert lst["meta"] == {"page": 1, "limit": 1, "count": 2, "hasnext": True}
    assert api.delete("/api/v5/mqtt/retainer/message/" + enc)[0] == 204
    st, body, _ = api.get("/api/v5/mqtt/retainer/message/" + enc)
    assert st == 404 and body["code"] == "NOT_FOUND"
    assert api.delete("/api/v5/mqtt/retainer/message/" + enc)[0] == 404
    # deleted for new subscribers, also in Redis (what a router restart reloads)
    assert lk.mosquitto_sub(stack, topic, count=1, timeout=1) == []
    assert stack.redis_cli("HEXISTS", "lk:retain", topic) == "0"


def urllib_quote(s):
    import urllib.parse
    return urllib.parse.quote(s, safe="")


# ---- bans ----------------------------------------------------------------------------------
def test_ban_clientid(stack, api):
    cid = "ban-" + RUN
    c = client(stack, cid)
    st, ban, _ = api.post("/api/v5/banned", {"as": "clientid", "who": cid, "reason": "test"})
    assert st == 200 and ban["who"] == cid and ban["until"] == "infinity"
    c.wait_disconnected(10)  # the connected one is kicked
    c.loop_stop()
    assert api.post("/api/v5/banned", {"as": "clientid", "who": cid})[1]["code"] == \
        "ALREADY_EXISTS"
    # its reconnects are refused: 3.1.1 "not authorised", 5.0 0x8A Banned
    with pytest.raises(lk.ConnectError) as e:
        lk.paho_client(stack, cid)
    assert e.value.rc == 5
    with pytest.raises(lk.ConnectError) as e:
        lk.paho_client(stack, cid, protocol=lk.MQTTv5)
    assert e.value.rc == 0x8A
    bans = api.get("/api/v5/banned?limit=1000")[1]["data"]
    assert {"as": "clientid", "who": cid} in [{"as": b["as"], "who": b["who"]} for b in bans]
    assert api.delete("/api/v5/banned/clientid/" + cid)[0] == 204
    assert api.delete("/api/v5/banned/clientid/" + cid)[0] == 404
    lk.paho_client(stack, cid).disconnect()


def test_ban_username_until(stack, api):
    user = "bu70-" + RUN
    pw = mqtt_account(stack, user)
    c = client(stack, "bu-" + RUN, username=user, password=pw)
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 4))
    st, _, _ = api.post("/api/v5/banned", {"as": "username", "who": user, "until": until})
    assert st == 200
    c.wait_disconnected(10)
    c.loop_stop()
    with pytest.raises(lk.ConnectError):
        lk.paho_client(stack, "bu2-" + RUN, username=user, password=pw)
    # the ban ends by itself
    lk.wait_until(lambda: lk.paho_client(stack, "bu3-" + RUN, username=user, password=pw,
                                         check=False).connack_rc == 0, 15, 0.5,
                  what="ban expired")


# ---- publish -------------------------------------------------------------------------------
def test_publish(stack, api, fleet):
    # a subscriber on each frontend
    subs = [c for c in fleet[:]]
    by_node = {}
    for c in subs:
        by_node.setdefault(nodes_of(api, {c.client_id})[c.client_id], c)
    assert len(by_node) == 2
    for c in by_node.values():
        c.subscribe("p70/%s/#" % RUN, qos=1)
    st, body, _ = api.post("/api/v5/publish", {"topic": "p70/%s/a" % RUN, "payload": "hello",
                                               "qos": 1})
    assert st == 200 and len(body["id"]) == 32
    st, body, _ = api.post("/api/v5/publish", {"topic": "p70/%s/b" % RUN,
                                               "payload": base64.b64encode(b"\x00\x01").decode(),
                                               "payload_encoding": "base64"})
    assert st == 200
    st, body, _ = api.post("/api/v5/publish/bulk", [
        {"topic": "p70/%s/c" % RUN, "payload": "1"}, {"topic": "p70/%s/d" % RUN, "payload": "2"}])
    assert st == 200 and len(body) == 2 and all("id" in x for x in body)
    for c in by_node.values():
        got = {m.topic: m.payload for m in c.wait_for(4)}
        assert got == {"p70/%s/a" % RUN: b"hello", "p70/%s/b" % RUN: b"\x00\x01",
                       "p70/%s/c" % RUN: b"1", "p70/%s/d" % RUN: b"2"}
        c.unsubscribe("p70/%s/#" % RUN)
    assert api.post("/api/v5/publish/bulk", [{"topic": "ok"}, {"topic": "bad/#"}])[0] == 400


# ---- stats, metrics, nodes -----------------------------------------------------------------
def test_nodes_stats_metrics(stack, api, fleet):
    st, nodes, _ = api.get("/api/v5/nodes")
    assert st == 200
    kinds = {n["kind"] for n in nodes if n["node_status"] == "running"}
    assert {"mqtt-frontend", "router", "session-store", "auth", "api"} <= kinds
    fe = [n for n in nodes if n["kind"] == "mqtt-frontend"]
    assert sum(n["connections"] for n in fe) >= len(fleet)
    for n in nodes:
        assert n["version"] and n["uptime"] >= 0 and n["memory_used"] > 0
    st, agg, _ = api.get("/api/v5/stats?aggregate=true")
    assert st == 200 and agg["connections.count"] >= len(fleet)
    assert agg["subscriptions.count"] >= 1
    st, per, _ = api.get("/api/v5/stats")
    assert {p["node"] for p in per} == {"fe-1", "fe-2"}
    assert sum(p["connections.count"] for p in per) == agg["connections.count"]
    st, m, _ = api.get("/api/v5/metrics?aggregate=true")
    assert st == 200 and m["messages.received"] >= 0 and "bytes.sent" in m
    st, text, hdrs = api.get("/api/v5/prometheus/stats", auth=False)
    assert st == 200 and hdrs["Content-Type"].startswith("text/plain")
    assert 'latchkey_connections{node="fe-1",kind="mqtt-frontend"}' in text


def test_locks_and_decisions(stack, api):
    """Latchkey's own: each lock's state (lock-arbiter) and the newest unlock decisions
    (history-writer, from PostgreSQL)."""
    stack.require("lock-arbiter", "history-writer")
    from lockhelp import setup_lock, device
    lock = "LA70" + RUN
    m, f = "m70-" + RUN, "f70-" + RUN
    pw = mqtt_account(stack, m)
    mqtt_account(stack, f, pw)
    setup_lock(stack, lock, [(m, "m"), (f, "f")])
    # the lock's own credential: its topics are closed to anyone else (test_22)
    dev = device(stack, lock, will=False)
    dev.publish("/%s/statu" % lock, "1", qos=1)
    a = client(stack, "a70-" + RUN, username=m, password=pw)
    b = client(stack, "b70-" + RUN, username=f, password=pw)
    a.publish("/%s/m" % lock, "1", qos=1)
    b.publish("/%s/f" % lock, "1", qos=1)
    assert dev.messages.get(timeout=10).payload == b"unlock"
    for c in (a, b, dev):
        c.disconnect()
    locks = lk.wait_until(lambda: [x for x in api.get("/api/v5/latchkey/locks?limit=10000")[1]
                                   ["data"] if x["lock"] == lock], 10, 0.3, what="lock state")
    assert locks[0]["state"] == "locked" and locks[0]["statu"] == "1"
    rows = lk.wait_until(lambda: [x for x in api.get("/api/v5/latchkey/decisions?limit=50")[1]
                                  ["data"] if x["lock"] == lock], 15, 0.3, what="decision row")
    assert rows[0]["decision"] == "granted" and rows[0]["time"] > 0


def test_api_restart(stack, api):
    """The api keeps no state: killed, restarted by s6, it answers again with the frontends
    found anew."""
    stack.kill("api")
    lk.wait_until(lambda: len([n for n in api.get("/api/v5/nodes")[1]
                               if n["kind"] == "mqtt-frontend" and n["node_status"] == "running"])
                  == 2, 20, 0.3, what="frontends found again")


def test_sys_topics_more(stack, api):
    """The rest of Mosquitto's $SYS list, published by the router every sys_interval."""
    cid = "sysq-" + RUN
    c = client(stack, cid, clean_session=False)
    c.subscribe("sysq/%s" % RUN, qos=1)
    c.disconnect()
    for i in range(3):
        lk.mosquitto_pub(stack, "sysq/%s" % RUN, "m%d" % i, qos=1)
    want = ["$SYS/broker/load/messages/received/1min", "$SYS/broker/load/bytes/sent/15min",
            "$SYS/broker/load/connections/5min", "$SYS/broker/clients/maximum",
            "$SYS/broker/clients/expired", "$SYS/broker/messages/stored",
            "$SYS/broker/heap/current", "$SYS/broker/heap/maximum",
            "$SYS/broker/publish/messages/received"]
    w = client(stack, "sysw-" + RUN)
    try:
        w.subscribe("$SYS/broker/#", 0)
        seen = {}

        def enough():
            for m in w.messages.drain(0.3, timeout=1):
                seen[m.topic] = m.text
            return all(t in seen for t in want) and int(seen["$SYS/broker/messages/stored"]) >= 3
        lk.wait_until(enough, 20, 0.1, what="the new $SYS topics")
        assert int(seen["$SYS/broker/clients/maximum"]) >= 1
        assert int(seen["$SYS/broker/heap/current"]) > 1000000
        assert float(seen["$SYS/broker/load/messages/received/1min"]) > 0
    finally:
        w.disconnect()
        api.delete("/api/v5/clients/" + cid)


def test_ban_peerhost(stack, api):
    """Last: a ban of 127.0.0.1 kicks every test client (they all come from there)."""
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3))
    st, _, _ = api.post("/api/v5/banned", {"as": "peerhost", "who": "127.0.0.1", "until": until})
    assert st == 200
    try:
        with pytest.raises(lk.ConnectError):
            lk.paho_client(stack, "bp-" + RUN)
    finally:
        api.delete("/api/v5/banned/peerhost/127.0.0.1")
    lk.paho_client(stack, "bp-" + RUN).disconnect()
