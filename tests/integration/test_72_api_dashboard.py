"""72: the dashboard (served by the api from $(BUILD)/dashboard, uPlot vendored at build
time) in the system's headless Chromium, driven by puppeteer-core
(tests/interop/dashboard): a wrong secret is refused, the right key signs in, a connected
client shows up in the client list, the Kick button disconnects it and it disappears; a
screenshot of the overview is kept in the run folder."""

import json
import os
import shutil
import subprocess
import uuid

import pytest

import apihelp
import lk

HERE = os.path.join(lk.ROOT, "tests", "interop", "dashboard")


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _npm_ready():
    if not os.path.isdir(os.path.join(HERE, "node_modules", "puppeteer-core")):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True,
                       capture_output=True, timeout=300,
                       env=dict(os.environ, PUPPETEER_SKIP_DOWNLOAD="1"))


def test_dashboard_kick(stack):
    stack.require("api", "mqtt-frontend-1")
    browser = _chromium()
    if not browser:
        pytest.skip("no Chromium (supervise/install-deps installs it)")
    if not os.path.exists(os.path.join(stack.build, "dashboard", "index.html")):
        pytest.fail("the dashboard is not built (make)")
    _npm_ready()
    key, secret = apihelp.new_key(stack, "t72")
    api = apihelp.Api(stack, key, secret)
    # static files: served, no traversal
    st, html, _ = api.get("/", auth=False)
    assert st == 200 and "Latchkey dashboard" in html
    assert api.get("/vendor/uPlot.iife.min.js", auth=False)[0] == 200
    # ../bin/api exists next to the dashboard folder: only the path check makes this a 404
    assert api.get("/../bin/api", auth=False)[0] == 404
    cid = "dash-" + uuid.uuid4().hex[:6]
    c = lk.paho_client(stack, cid)
    c.paho.reconnect_delay_set(60, 120)
    shot = os.path.join(stack.run_dir, "dashboard.png")
    p = subprocess.run(["node", "drive.js", browser, "http://127.0.0.1:%d/" % stack.api_port,
                        key, secret, cid, shot], cwd=HERE, capture_output=True, text=True,
                       timeout=120)
    steps = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    names = [s["step"] for s in steps]
    assert p.returncode == 0, (p.stdout, p.stderr[-2000:])
    assert names[:5] == ["refused", "signed-in", "client-seen", "client-gone", "screenshot"], names
    assert "pageerror" not in names
    assert int(steps[1]["connections"]) >= 1
    c.wait_disconnected(5)
    c.loop_stop()
    assert api.get("/api/v5/clients/" + cid)[0] == 404
    assert os.path.getsize(shot) > 10000
    keep = os.environ.get("LATCHKEY_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, os.path.join(keep, "dashboard.png"))
