"""apihelp: an HTTP client for the api process's REST API (urllib), and the API key."""

import base64
import json
import os
import subprocess
import urllib.error
import urllib.request

import lk
from lockhelp import cli


def new_key(stack, name="test"):
    """`latchkey apikey add`: (key, secret)."""
    out = cli(stack, "apikey", "add", name).stdout.split()
    return out[1], out[3]


class Api:
    def __init__(self, stack, key, secret, scheme="http"):
        self.base = "%s://127.0.0.1:%d" % (scheme, stack.api_port)
        self.key, self.secret = key, secret

    def call(self, method, path, body=None, auth=True, raw=None, headers=None):
        """(status, parsed JSON or text or None, headers)"""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth:
            tok = base64.b64encode(("%s:%s" % (self.key, self.secret)).encode()).decode()
            req.add_header("Authorization", "Basic " + tok)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                status, text, hdrs = r.status, r.read().decode(), r.headers
        except urllib.error.HTTPError as e:
            status, text, hdrs = e.code, e.read().decode(), e.headers
        ctype = hdrs.get("Content-Type", "")
        if text and ctype.startswith("application/json"):
            return status, json.loads(text), hdrs
        return status, text or None, hdrs

    def get(self, path, **kw):
        return self.call("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.call("POST", path, body, **kw)

    def delete(self, path, **kw):
        return self.call("DELETE", path, **kw)


def curl(stack, key, secret, *args):
    """curl -s -u key:secret <args> against the api; returns (status, body text)."""
    p = subprocess.run(["curl", "-s", "-u", "%s:%s" % (key, secret), "-w", "\n%{http_code}"]
                       + [a if not a.startswith("/") else "http://127.0.0.1:%d%s" % (stack.api_port, a)
                          for a in args], capture_output=True, text=True, timeout=20)
    body, _, code = p.stdout.rpartition("\n")
    return int(code), body
