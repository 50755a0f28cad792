"""00: the stack itself: Redis and PostgreSQL under s6, restarts keep data, the MQTT
listener answers (when the daemons are built)."""

import os
import time

import lk


def test_redis_up_and_local(stack):
    assert stack.is_up("redis")
    assert stack.redis_cli("ping") == "PONG"
    assert stack.redis_cli("config", "get", "bind").splitlines()[1] == "127.0.0.1"
    assert stack.redis_cli("config", "get", "appendonly").splitlines()[1] == "yes"
    assert stack.redis_cli("config", "get", "appendfsync").splitlines()[1] == "everysec"
    assert stack.redis_cli("config", "get", "dir").splitlines()[1] == \
        os.path.join(os.path.realpath(stack.run_dir), "data", "redis")


def test_postgres_up_with_latchkey_db(stack):
    assert stack.is_up("postgres")
    assert stack.psql("select current_database()") == "latchkey"
    assert stack.psql("show listen_addresses") == "127.0.0.1"
    assert stack.psql("show port") == str(stack.pg_port)


def test_logs_timestamped_once(stack):
    log = stack.log("postgres")
    assert "database system is ready to accept connections" in log
    line = next(l for l in log.splitlines() if "ready to accept connections" in l)
    # "@<tai64n> [pid] LOG: ..." : s6-log's stamp, none from PostgreSQL
    stamp, rest = line.split(" ", 1)
    assert stamp.startswith("@") and len(stamp) == 25
    assert rest.startswith("[")


def test_redis_sigkill_keeps_data(stack):
    stack.redis_cli("set", "lk:test:00", "survives")
    stack.redis_cli("rpush", "lk:test:00:list", "a", "b", "c")
    # appendfsync everysec: the write(2) to the AOF happens before the reply, so a SIGKILL
    # (not a machine crash) loses nothing; wait out one fsync period all the same.
    time.sleep(1.2)
    old = stack.svc_pid("redis")
    new = stack.kill("redis")
    assert new != old
    assert stack.redis_cli("get", "lk:test:00") == "survives"
    assert stack.redis_cli("lrange", "lk:test:00:list", "0", "-1").split() == ["a", "b", "c"]
    assert "Ready to accept connections" in stack.log("redis")


def test_postgres_sigkill_recovers(stack):
    stack.psql("create table if not exists lk_test_00 (k text primary key, v text)")
    stack.psql("insert into lk_test_00 values ('k', 'committed') on conflict do nothing")
    stack.kill("postgres")
    assert stack.psql("select v from lk_test_00 where k = 'k'") == "committed"


def test_mqtt_roundtrip(stack):
    stack.require("mqtt-frontend-1", "mqtt-frontend-2", "router", "session-store", "auth")
    with lk.paho_client(stack, "t00-sub") as sub:
        assert sub.subscribe("t00/#", qos=1) == [1]
        lk.mosquitto_pub(stack, "t00/a", "hello", qos=1)
        m = sub.wait_for(1, timeout=10)[0]
        assert (m.topic, m.payload) == ("t00/a", b"hello")


def test_whole_stack_restart_keeps_data(stack):
    stack.redis_cli("set", "lk:test:00:restart", "kept")
    stack.psql("create table if not exists lk_test_00r (v text)")
    stack.psql("insert into lk_test_00r values ('kept')")
    stack.stop_all()
    assert stack.processes() == [], "processes left after stop_all"
    stack.start_all()
    for svc in stack.services:
        assert stack.is_up(svc), svc
    assert stack.redis_cli("get", "lk:test:00:restart") == "kept"
    assert stack.psql("select v from lk_test_00r") == "kept"
