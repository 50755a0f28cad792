"""30: history-writer. History events reach PostgreSQL exactly once (DESIGN.md guarantee 5):
re-sent events add no row, a PostgreSQL outage while events flow loses none (they wait in
the spool, acked, and reach PostgreSQL in order when it is back), and a SIGKILLed writer
loses no acked event, also when it dies with a full spool.

Producer: build/test/lk-emit (tests/tools/lk_emit.c), a real bus client that sends events
with ids "<prefix>-<i>" reliably and reports how many were acked.

Environment: LATCHKEY_HISTORY_OUTAGE (seconds PostgreSQL stays down; default 20, or 60
with LATCHKEY_LONG=1)."""
import os
import signal
import subprocess
import time

import pytest

import lk

OUTAGE = float(os.environ.get("LATCHKEY_HISTORY_OUTAGE")
               or (60 if os.environ.get("LATCHKEY_LONG") else 20))


@pytest.fixture(autouse=True)
def _need(stack):
    stack.require("postgres", "history-writer")
    if not os.access(emitter_path(stack), os.X_OK):
        pytest.skip("lk-emit not built (make)")


def emitter_path(stack):
    return os.path.join(stack.build, "test", "lk-emit")


def endpoint(stack):
    return "ipc://%s/ipc/history-writer.ipc" % stack.run_dir


def spool_file(stack):
    return os.path.join(stack.run_dir, "data", "history-spool", "history.spool")


def spool_bytes(stack):
    try:
        return os.path.getsize(spool_file(stack))
    except FileNotFoundError:
        return 0


class Emitter:
    """lk-emit running in the background; wait() returns (sent, acked) from its last line."""

    def __init__(self, stack, prefix, count, rate=0, timeout=60, node=None, window=20):
        self.timeout = timeout
        self.p = subprocess.Popen(
            [emitter_path(stack), "-e", endpoint(stack), "-c", str(count), "-p", prefix,
             "-r", str(rate), "-t", str(timeout), "-n", node or "emit-" + prefix,
             "-w", str(window), "-k", "lock_state", "-l", "L-" + prefix],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            stdin=subprocess.DEVNULL)

    def wait(self):
        try:
            out, _ = self.p.communicate(timeout=self.timeout + 15)
        except subprocess.TimeoutExpired:
            self.p.kill()
            out, _ = self.p.communicate(timeout=10)
            raise AssertionError("lk-emit did not end:\n" + out[-2000:])
        last = out.strip().splitlines()[-1] if out.strip() else ""
        fields = dict(f.split("=", 1) for f in last.split()[1:] if "=" in f)
        assert last.startswith("done"), "lk-emit: %s (exit %d)\n%s" % (
            last, self.p.returncode, out[-2000:])
        return int(fields["sent"]), int(fields["acked"])

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.communicate(timeout=10)


def emit(stack, prefix, count, **kw):
    return Emitter(stack, prefix, count, **kw).wait()


def rows(stack, prefix):
    """(rows, distinct ids) of the events of prefix in PostgreSQL."""
    out = stack.psql("SELECT count(*), count(DISTINCT id) FROM events WHERE id LIKE '%s-%%'"
                     % prefix)
    n, d = out.split("|")
    return int(n), int(d)


def wait_rows(stack, prefix, n, timeout=30):
    return lk.wait_until(lambda: rows(stack, prefix) == (n, n), timeout, interval=0.2,
                         what="%d events of %s in postgresql (have %s)"
                         % (n, prefix, rows(stack, prefix)))


def out_of_order(stack, prefix):
    """events of prefix whose emission index is not above the previous one in write order"""
    return int(stack.psql(
        "SELECT count(*) FROM (SELECT (details->>'i')::int AS i, "
        "lag((details->>'i')::int) OVER (ORDER BY seq) AS prev FROM events "
        "WHERE id LIKE '%s-%%') x WHERE prev IS NOT NULL AND i <= prev" % prefix))


def postgres(stack, up, timeout=30):
    """s6-svc -u / -d on the stack's PostgreSQL, then waits until it is up and ready / down."""
    scan = stack.scan("postgres")
    subprocess.run(["s6-svc", "-u" if up else "-d", scan], check=True, timeout=10)
    p = subprocess.run(["s6-svwait", "-U" if up else "-D", "-t", str(int(timeout * 1000)), scan],
                       capture_output=True, text=True, timeout=timeout + 10)
    assert p.returncode == 0, "postgres not %s within %ss" % ("up" if up else "down", timeout)


@pytest.fixture
def pg_back_up(stack):
    """Whatever a test does to PostgreSQL, it is up again for the next one."""
    yield
    if not stack.svstat("postgres")["wantedup"] or not stack.is_up("postgres"):
        postgres(stack, True, timeout=60)
    stack.wait_up("history-writer", timeout=30)


def test_schema_is_migrated(stack):
    # every migration of sql/, once (history-writer and ota-distributor both apply them)
    versions = ",".join(str(v) for v in sorted(
        int(f.split("_")[0]) for f in os.listdir(os.path.join(lk.ROOT, "sql"))
        if f.endswith(".sql") and f.split("_")[0].isdigit()))
    lk.wait_until(lambda: stack.psql("SELECT string_agg(version::text, ',' ORDER BY version) "
                                     "FROM schema_migrations") == versions, 20,
                  what="migrations " + versions)
    names = stack.psql("SELECT string_agg(c.relname || ':' || c.relkind::text, ',' ORDER BY c.relname) "
                       "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v')").split(",")
    for want in ("bindings:r", "events:r", "lock_history:v", "locks:r", "schema_migrations:r",
                 "unlock_decisions:v", "users:r"):
        assert want in names
    # bindings refer to users and locks
    stack.psql("INSERT INTO users (name) VALUES ('t30-alice'); "
               "INSERT INTO locks (lockno, model) VALUES ('t30-L', 'x1'); "
               "INSERT INTO bindings (user_name, lockno, role) VALUES ('t30-alice', 't30-L', 'm')")
    with pytest.raises(lk.StackError):
        stack.psql("INSERT INTO bindings (user_name, lockno, role) VALUES ('nobody', 't30-L', 'f')")
    assert stack.psql("SELECT role FROM bindings WHERE lockno = 't30-L'") == "m"
    stack.psql("DELETE FROM users WHERE name = 't30-alice'; DELETE FROM locks WHERE lockno = 't30-L'")
    # a restart does not apply anything twice
    stack.kill("history-writer")
    assert stack.psql("SELECT count(*) FROM schema_migrations") == str(len(versions.split(",")))


def test_pg_door_and_store_selftests_live(stack):
    """lk_pg and hw_store against the stack's PostgreSQL (scratch schema and database)."""
    env = dict(os.environ, LATCHKEY_PG_TEST_CONNINFO=stack.pg_conninfo, LATCHKEY_ROOT=lk.ROOT)
    p = subprocess.run([os.path.join(stack.build, "test", "history-writer-selftest"), "-v"],
                       env=env, capture_output=True, text=True, timeout=60, cwd=lk.ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "lk_pg: live checks" in p.stdout and "hw_store: live checks: ok" in p.stdout
    assert p.stdout.strip().endswith("3 passed, 0 failed")


def test_events_written_once_and_resend_adds_nothing(stack):
    prefix = "once%d" % os.getpid()
    assert emit(stack, prefix, 1000) == (1000, 1000)
    wait_rows(stack, prefix, 1000, timeout=10)
    # the same 1000 events again (a producer re-sending after its restart): no new row
    assert emit(stack, prefix, 1000, node="emit-other-" + prefix) == (1000, 1000)
    assert rows(stack, prefix) == (1000, 1000)
    row = stack.psql("SELECT kind, lockno, actor, details->>'i', "
                     "abs(extract(epoch FROM now() - time)) < 300 FROM events "
                     "WHERE id = '%s-7'" % prefix)
    assert row == "lock_state|L-%s|emit-%s|7|t" % (prefix, prefix)
    assert stack.psql("SELECT count(*) FROM lock_history WHERE lockno = 'L-%s'" % prefix) == "1000"
    stack.wait_log("history-writer", "duplicates skipped", timeout=15)


@pytest.mark.timeout(int(OUTAGE) + 100)
def test_postgres_outage_spools_then_every_event_once_in_order(stack, pg_back_up):
    prefix = "outage%d" % os.getpid()
    count = 2000
    # spread the events over the outage and a few seconds either side
    rate = max(20, int(count / (OUTAGE + 8)))
    e = Emitter(stack, prefix, count, rate=rate, timeout=int(OUTAGE) + 60)
    try:
        time.sleep(3)
        assert rows(stack, prefix)[0] > 0, "nothing written before the outage"
        postgres(stack, False)
        t_down = time.monotonic()
        time.sleep(min(3, OUTAGE / 2))
        early = spool_bytes(stack)
        time.sleep(max(0, OUTAGE - (time.monotonic() - t_down)))
        late = spool_bytes(stack)
        # acks keep coming from the spool: the emitter's window of 20 would stall otherwise
        assert 0 < early < late, "spool did not grow during the outage (%d, %d)" % (early, late)
        postgres(stack, True)
        sent, acked = e.wait()
    finally:
        e.stop()
    assert (sent, acked) == (count, count)
    wait_rows(stack, prefix, count, timeout=60)
    lk.wait_until(lambda: spool_bytes(stack) == 0, 30, what="empty spool")
    assert out_of_order(stack, prefix) == 0
    lk.wait_until(lambda: "spooling events to" in stack.log("history-writer")
                  and "spool drained" in stack.log("history-writer"), 10,
                  what="the writer's spool log lines")


def test_writer_kill_mid_stream_loses_no_acked_event(stack):
    prefix = "kill%d" % os.getpid()
    count = 3000
    e = Emitter(stack, prefix, count, rate=500, timeout=60)
    try:
        time.sleep(2)
        before = rows(stack, prefix)[0]
        stack.kill("history-writer")
        sent, acked = e.wait()
    finally:
        e.stop()
    assert 0 < before < count, "the kill did not land mid-stream (%d written before)" % before
    assert (sent, acked) == (count, count)
    wait_rows(stack, prefix, count, timeout=15)


def test_writer_killed_with_a_spool_drains_it_after_restart(stack, pg_back_up):
    prefix = "spoolkill%d" % os.getpid()
    postgres(stack, False)
    assert emit(stack, prefix, 500, timeout=30) == (500, 500)
    assert spool_bytes(stack) > 0
    old = stack.svc_pid("history-writer")
    stack.signal("history-writer", signal.SIGKILL)
    lk.wait_until(lambda: stack.svc_pid("history-writer") not in (0, old), 30,
                  what="history-writer restarted")
    # restarted while PostgreSQL is down: it takes events into the spool all the same
    stack.wait_up("history-writer", timeout=30)
    assert emit(stack, prefix + "b", 200, timeout=30) == (200, 200)
    postgres(stack, True)
    wait_rows(stack, prefix, 500, timeout=60)
    wait_rows(stack, prefix + "b", 200, timeout=30)
    lk.wait_until(lambda: spool_bytes(stack) == 0, 30, what="empty spool")
    assert out_of_order(stack, prefix) == 0
