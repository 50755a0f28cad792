"""Fixtures of the Latchkey integration tests.

`stack` (session scope): one Latchkey stack on free ports in a temporary run folder,
started with supervise/latchkey-up --detach and always stopped at the end (latchkey-down;
also on SIGTERM/SIGHUP and at interpreter exit). It runs every service when every daemon
is built in $LATCHKEY_BUILD (default build/), else only Redis and PostgreSQL
(LATCHKEY_SERVICES overrides); tests that need a daemon call stack.require("router", ...)
to be skipped without it. See lk.Stack for its attributes and methods.

Environment: LATCHKEY_BUILD (build folder), LATCHKEY_SERVICES (subset), LATCHKEY_TEST_TMP
(parent of the run folder; tests/run-all sets it), LATCHKEY_KEEP_RUN=1 (keep the run folder
and its logs after the session).
"""

import atexit
import os
import signal
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lk  # noqa: E402
import replhelp  # noqa: E402


def _stop_on_signal(stack):
    previous = {}

    def handler(signum, frame):
        # Turn SIGTERM/SIGHUP (a timeout's kill, a closed terminal) into an exception so
        # that pytest unwinds and the fixture's finalizer stops the stack.
        raise KeyboardInterrupt("signal %d" % signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, handler)
    return previous


@pytest.fixture(scope="session")
def stack():
    # LATCHKEY_TEST_REPLICAS="router=2 ...": the shared stack runs those replicas (to run
    # any suite against replicated services); none by default
    s = lk.Stack(replicas=replhelp.replicas_from_env(default=""))
    done = []

    def teardown():
        if not done:
            done.append(True)
            s.destroy()

    atexit.register(teardown)
    previous = _stop_on_signal(s)
    try:
        s.start_all()
        yield s
    finally:
        try:
            teardown()
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)
            atexit.unregister(teardown)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failed test that uses the stack, attach the tail of every service's log."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and "stack" in getattr(item, "fixturenames", ()):
        s = item.funcargs.get("stack") if hasattr(item, "funcargs") else None
        if isinstance(s, lk.Stack):
            for svc in s.services:
                report.sections.append(("log of " + svc, s.log_tail(svc, 15, header=False)))
