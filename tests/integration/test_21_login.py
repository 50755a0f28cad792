"""21: temporary logins (seed 004's app login) and the MQTT 5 history query.

`latchkey login <user>` asks the lock-arbiter over the bus (LoginRequest, the same call an
app back end makes) for random MQTT credentials whose ACL covers only the user's locks,
/unauth and the history request/reply topics. The app's Last Will on /unauth revokes them:
keys deleted, every client using them disconnected, reconnecting refused.
"""

import json
import time
import uuid

import paho.mqtt.properties as mqtt_props
import pytest
from paho.mqtt.packettypes import PacketTypes

import lk
from lockhelp import cli, device, setup_lock, superuser, wait_decisions

RUN = uuid.uuid4().hex[:6]


def login(stack, user, *opts):
    p = cli(stack, "login", *opts, user)
    out = dict(line.split(" ", 1) for line in p.stdout.strip().splitlines())
    out["locks"] = out.get("locks", "").split()
    return out


@pytest.fixture(scope="module")
def world(stack):
    stack.require("lock-arbiter", "mqtt-frontend-1", "router", "session-store", "auth")
    w = {"dana": "dana-" + RUN, "erik": "erik-" + RUN, "fay": "fay-" + RUN,
         "A": "LA" + RUN, "B": "LB" + RUN}
    setup_lock(stack, w["A"], [(w["dana"], "m"), (w["erik"], "f")])
    setup_lock(stack, w["B"], [(w["fay"], "m")])
    return w


def temp_client(stack, cred, tag, will=True, protocol=lk.MQTTv311, check=True):
    w = dict(topic="/unauth", payload=cred["username"], qos=1) if will else None
    return lk.paho_client(stack, "app-%s-%s" % (tag, RUN), username=cred["username"],
                          password=cred["password"], will=w, protocol=protocol, check=check)


def test_login_acl_covers_only_own_locks(stack, world):
    cred = login(stack, world["dana"])
    assert cred["username"].startswith("tmp-") and len(cred["password"]) >= 20
    assert cred["locks"] == [world["A"]]
    assert int(cred["expires_at_ms"]) > time.time() * 1000
    # stored in the auth service's layout, with an expiry
    assert stack.redis_cli("HGET", "mqtt_user:" + cred["username"], "password").startswith("$7$")
    assert int(stack.redis_cli("TTL", "mqtt_acl:" + cred["username"])) > 0
    assert stack.redis_cli("GET", "lk:{arb}:login:" + cred["username"]) == world["dana"]
    su, supw = superuser(stack, "obs-su21-" + RUN)
    obs = lk.paho_client(stack, "obs-acl-" + RUN, username=su, password=supw)
    obs.subscribe([("/%s/#" % world["A"], 1), ("/%s/#" % world["B"], 1)])
    with temp_client(stack, cred, "acl", will=False) as c:
        assert c.subscribe("/%s/#" % world["A"], 1) == [1]
        assert c.subscribe("/%s/#" % world["B"], 1) == [128]
        c.publish("/%s/m" % world["A"], "1", qos=1)       # its lock, its role
        c.publish("/%s/f" % world["A"], "1", qos=1)       # its lock, not its role
        c.publish("/%s/m" % world["B"], "1", qos=1)       # another lock
        got = [(m.topic, m.payload) for m in obs.messages.drain(quiet=1.0)
               if not m.topic.endswith("/result")]      # the arbiter's answers
        assert got == [("/%s/m" % world["A"], b"1")], got
    obs.disconnect()
    # the confirmation counted as dana's (a round waiting for the f party)
    lk.wait_until(lambda: stack.redis_cli("HGET", "lk:{arb}:round:" + world["A"], "c:m")
                  .startswith(world["dana"] + "\t"), 5, what="dana's confirmation")


def test_login_refused(stack, world):
    p = cli(stack, "login", "nobody-" + RUN, check=False)
    assert p.returncode == 1 and "unknown user" in p.stderr
    cli(stack, "user", "add", "lonely-" + RUN)
    p = cli(stack, "login", "lonely-" + RUN, check=False)
    assert p.returncode == 1 and "no lock" in p.stderr


def test_temporary_users_unlock_together(stack, world):
    da, er = login(stack, world["dana"]), login(stack, world["erik"])
    dev = device(stack, world["A"], client_id="dev-" + RUN)
    with temp_client(stack, da, "u1", will=False) as a, temp_client(stack, er, "u2",
                                                                     will=False) as b:
        a.publish("/%s/m" % world["A"], "1", qos=1)
        b.publish("/%s/f" % world["A"], "1", qos=1)
        assert dev.messages.get(timeout=5).payload == b"unlock"
        dev.messages.expect_none(1.0)
    d = wait_decisions(stack, world["A"], lambda d: any(x["decision"] == "granted" for x in d))
    g = [x for x in d if x["decision"] == "granted"][-1]
    # temporary names map to the real users
    assert sorted(c["user"] for c in g["confirmations"]) == sorted([world["dana"],
                                                                   world["erik"]])
    dev.disconnect()


def test_last_will_on_unauth_revokes(stack, world):
    cred = login(stack, world["dana"])
    first = temp_client(stack, cred, "w1")
    second = temp_client(stack, cred, "w2", will=False)
    first.close()                                   # connection lost: Will on /unauth
    second.wait_disconnected(timeout=10)            # revoked through auth → frontends
    lk.wait_until(lambda: stack.redis_cli("EXISTS", "mqtt_user:" + cred["username"]) == "0", 5,
                  what="credentials deleted")
    assert stack.redis_cli("EXISTS", "mqtt_acl:" + cred["username"]) == "0"
    with pytest.raises(lk.ConnectError):
        temp_client(stack, cred, "w3", will=False)


def test_unauth_for_someone_else_is_ignored(stack, world):
    victim = login(stack, world["erik"])
    attacker = login(stack, world["dana"])
    with temp_client(stack, victim, "v", will=False) as v:
        with temp_client(stack, attacker, "x", will=False) as x:
            x.publish("/unauth", victim["username"], qos=1)
        assert not v.disconnected.wait(1.5)
    assert stack.redis_cli("EXISTS", "mqtt_user:" + victim["username"]) == "1"


def test_login_ttl_expiry_disconnects(stack, world):
    cred = login(stack, world["erik"], "--ttl", "2")
    c = temp_client(stack, cred, "ttl", will=False)
    c.wait_disconnected(timeout=10)
    assert stack.redis_cli("EXISTS", "mqtt_user:" + cred["username"]) == "0"


def _history_request(stack, cred, lock, tag, **fields):
    c = temp_client(stack, cred, tag, will=False, protocol=lk.MQTTv5)
    reply = "$lk/reply/%s/h" % cred["username"]
    assert c.subscribe(reply, 1)[0] < 128
    props = mqtt_props.Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = reply
    props.CorrelationData = b"corr-" + tag.encode()
    body = dict(lock=lock, **fields)
    c.publish("$lk/history/req", json.dumps(body), qos=1, properties=props)
    m = c.messages.get(timeout=10)
    c.disconnect()
    assert m.topic == reply
    assert m.properties.CorrelationData == b"corr-" + tag.encode()
    return json.loads(m.payload)


def test_history_query_over_mqtt5(stack, world):
    stack.require("history-writer")
    lock = world["A"]
    dev = device(stack, lock, client_id="hdev-" + RUN, subscribe=False, will=False)
    dev.publish("/%s/statu" % lock, "1", qos=1)
    dev.publish("/%s/statu" % lock, "0", qos=1)
    dev.disconnect()
    lk.wait_until(lambda: int(stack.psql("SELECT count(*) FROM events WHERE lockno = '%s' AND "
                                         "kind = 'lock_state'" % lock)) >= 2, 10,
                  what="state events in PostgreSQL")
    cred = login(stack, world["dana"])
    r = _history_request(stack, cred, lock, "ok", limit=50)
    assert r["ok"] is True and r["lock"] == lock
    kinds = [row["kind"] for row in r["rows"]]
    assert "lock_state" in kinds
    states = [row["details"]["change"] for row in r["rows"] if row["kind"] == "lock_state"]
    assert states[-2:] == ["locked", "unlocked"]
    assert all(row["lock"] == lock and row["time"] > 0 for row in r["rows"])
    times = [row["time"] for row in r["rows"]]
    assert times == sorted(times)
    # limit: the newest rows
    r2 = _history_request(stack, cred, lock, "lim", limit=1)
    assert len(r2["rows"]) == 1 and r2["rows"][0]["id"] == r["rows"][-1]["id"]
    # the shell gets the same rows
    rows = json.loads(cli(stack, "history", "--limit", "50", lock).stdout)
    assert [x["id"] for x in rows] == [x["id"] for x in r["rows"]]


def test_history_query_refused_for_unbound_lock(stack, world):
    cred = login(stack, world["dana"])
    r = _history_request(stack, cred, world["B"], "no")
    assert r["ok"] is False and "not bound" in r["error"]
    assert "rows" not in r
