"""73: app login over HTTPS (POST /login, seed 004). A local identity provider — a real
HTTPS server (Python http.server + ssl, the stack's test CA) serving an OpenID Connect
discovery document, its JSON Web Key Set (an RSA and an EC P-256 key) and a code2Session-
like code endpoint — proves who the app's user is; a second api process (node api-t73,
its own ports and login configuration) on the stack's bus answers with temporary MQTT
credentials whose ACL covers only that user's locks."""

import base64
import http.server
import json
import os
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

import lk
from lockhelp import setup_lock

RUN = uuid.uuid4().hex[:6]
AUD = "app-" + RUN


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _int_b64u(n):
    return b64u(n.to_bytes((n.bit_length() + 7) // 8, "big"))


class Keys:
    def __init__(self):
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.other = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self):
        rn = self.rsa.public_key().public_numbers()
        en = self.ec.public_key().public_numbers()
        return {"keys": [
            {"kty": "RSA", "kid": "r1", "alg": "RS256", "use": "sig", "n": _int_b64u(rn.n),
             "e": _int_b64u(rn.e)},
            {"kty": "EC", "kid": "e1", "crv": "P-256", "alg": "ES256", "use": "sig",
             "x": b64u(en.x.to_bytes(32, "big")), "y": b64u(en.y.to_bytes(32, "big"))}]}

    def token(self, claims, alg="RS256", kid=None, key=None):
        kid = kid or ("r1" if alg == "RS256" else "e1")
        head = b64u(json.dumps({"alg": alg, "typ": "JWT", "kid": kid}).encode())
        body = b64u(json.dumps(claims).encode())
        signing = ("%s.%s" % (head, body)).encode()
        if alg == "RS256":
            sig = (key or self.rsa).sign(signing, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "ES256":
            r, s = decode_dss_signature((key or self.ec).sign(signing, ec.ECDSA(hashes.SHA256())))
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        else:
            sig = b""
        return "%s.%s" % (signing.decode(), b64u(sig))


class Provider:
    """The identity provider: HTTPS on 127.0.0.1 with the stack's test server certificate."""

    def __init__(self, stack, keys):
        self.codes = {}
        self.hits = []
        prov = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                u = urllib.parse.urlparse(self.path)
                prov.hits.append(u.path)
                if u.path == "/.well-known/openid-configuration":
                    body = {"issuer": prov.issuer, "jwks_uri": prov.issuer + "/jwks.json"}
                elif u.path == "/jwks.json":
                    body = keys.jwks()
                elif u.path == "/code2session":
                    code = urllib.parse.parse_qs(u.query).get("js_code", [""])[0]
                    if code.startswith("slow-"):
                        time.sleep(2.5)
                    user = prov.codes.get(code)
                    body = {"openid": user, "session_key": "x"} if user else \
                        {"errcode": 40029, "errmsg": "invalid code"}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(stack.tls_dir, "server.crt"),
                            os.path.join(stack.tls_dir, "server.key"))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.issuer = "https://127.0.0.1:%d" % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def world(stack):
    stack.require("lock-arbiter", "mqtt-frontend-1", "auth", "router", "session-store")
    keys = Keys()
    idp = Provider(stack, keys)
    user, stranger = "oidc-%s" % RUN, "nolock-%s" % RUN
    lock, other = "LK%s" % RUN, "LO%s" % RUN
    setup_lock(stack, lock, [(user, "m")])
    setup_lock(stack, other, [("someone-" + RUN, "f")])
    from lockhelp import cli
    cli(stack, "user", "add", stranger)
    http_port, https_port = lk.free_port(), lk.free_port()
    env = dict(stack.env)
    env.update({
        "LATCHKEY_API_PORT": str(http_port), "LATCHKEY_API_HTTPS_PORT": str(https_port),
        "LATCHKEY_LOGIN_OIDC_ISSUER": idp.issuer, "LATCHKEY_LOGIN_OIDC_AUDIENCE": AUD,
        "LATCHKEY_LOGIN_CAFILE": os.path.join(stack.tls_dir, "ca.crt"),
        "LATCHKEY_LOGIN_CODE_URL": idp.issuer + "/code2session?js_code=%c",
        "LATCHKEY_LOGIN_RATE": "40"})
    log = open(os.path.join(stack.run_dir, "api-t73.log"), "w")
    proc = subprocess.Popen([os.path.join(stack.build, "bin", "api"), "-c",
                             os.path.join(lk.ROOT, "supervise", "latchkey.conf"), "-n", "api-t73"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    w = {"keys": keys, "idp": idp, "user": user, "stranger": stranger, "lock": lock,
         "other": other, "https": https_port, "http": http_port, "stack": stack}
    try:
        lk.wait_until(lambda: _up(w), 20, 0.2, what="api-t73 serving")
        # the keys were fetched through discovery at start
        assert "/.well-known/openid-configuration" in idp.hits and "/jwks.json" in idp.hits
        yield w
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        idp.close()


def _up(w):
    try:
        login(w, {}, check_ssl=True)
        return True
    except OSError:
        return False


def login(w, body, scheme="https", check_ssl=True):
    """(status, JSON) of POST /login"""
    port = w["https"] if scheme == "https" else w["http"]
    req = urllib.request.Request("%s://127.0.0.1:%d/login" % (scheme, port),
                                 data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    ctx = ssl.create_default_context(cafile=os.path.join(w["stack"].tls_dir, "ca.crt"))
    try:
        with urllib.request.urlopen(req, timeout=15,
                                    context=ctx if scheme == "https" else None) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def claims(w, **over):
    now = int(time.time())
    c = {"iss": w["idp"].issuer, "aud": AUD, "sub": w["user"], "iat": now, "exp": now + 300,
         "nonce": uuid.uuid4().hex}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def test_rs256_token_and_acl(world):
    w = world
    st, r = login(w, {"id_token": w["keys"].token(claims(w))})
    assert st == 200, r
    assert r["exists"] is True and r["lock"] == w["lock"] and r["role"] == "m"
    assert r["username"].startswith("tmp-") and r["password"] and r["date"]
    assert r["expires_at"] > time.time() * 1000 and r["expiry"]
    assert r["locks"] == [{"lock": w["lock"], "role": "m"}]
    # the credentials work, and only for this user's lock
    c = lk.paho_client(w["stack"], "app-" + RUN, username=r["username"], password=r["password"])
    try:
        assert c.subscribe("/%s/#" % w["lock"], qos=1) == [1]
        assert c.subscribe("/%s/#" % w["other"], qos=1) == [128]
        c.publish("/%s/m" % w["lock"], "ok", qos=1)
    finally:
        c.disconnect()
    # a second login with the same token is a replay
    st, r2 = login(w, {"id_token": w["keys"].token(claims(w, nonce="fixed-" + RUN))})
    assert st == 200
    tok = w["keys"].token(claims(w, nonce="again-" + RUN))
    assert login(w, {"id_token": tok})[0] == 200
    st, r3 = login(w, {"id_token": tok})
    assert st == 401 and r3["code"] == "BAD_PROOF" and "used" in r3["message"]


def test_es256_token(world):
    st, r = login(world, {"id_token": world["keys"].token(claims(world), alg="ES256")})
    assert st == 200 and r["exists"] is True


@pytest.mark.parametrize("case", ["forged", "tampered", "none", "aud", "iss", "expired",
                                  "future", "garbage", "kid"])
def test_bad_tokens(world, case):
    w, k = world, world["keys"]
    if case == "forged":
        tok = k.token(claims(w), key=k.other)  # signed by a key the issuer never published
    elif case == "tampered":
        good = k.token(claims(w))
        h, _, s = good.split(".")
        tok = "%s.%s.%s" % (h, b64u(json.dumps(claims(w, sub="someone-" + RUN)).encode()), s)
    elif case == "none":
        tok = k.token(claims(w), alg="none")
    elif case == "aud":
        tok = k.token(claims(w, aud="another-app"))
    elif case == "iss":
        tok = k.token(claims(w, iss="https://evil.example"))
    elif case == "expired":
        tok = k.token(claims(w, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200))
    elif case == "future":
        tok = k.token(claims(w, iat=int(time.time()) + 3600, exp=int(time.time()) + 7200))
    elif case == "kid":
        tok = k.token(claims(w), kid="nope", key=k.other)
    else:
        tok = "not.a.jwt"
    st, r = login(w, {"id_token": tok})
    assert st == 401 and r["code"] == "BAD_PROOF", (case, st, r)


def test_code_login(world):
    w = world
    code = "c-" + uuid.uuid4().hex
    w["idp"].codes[code] = w["user"]
    st, r = login(w, {"code": code})
    assert st == 200 and r["exists"] is True and r["lock"] == w["lock"]
    st, r = login(w, {"code": code})
    assert st == 401 and "used" in r["message"]
    st, r = login(w, {"code": "unknown-" + RUN})
    assert st == 401 and r["code"] == "BAD_PROOF"


def test_slow_provider_does_not_block(world):
    """A code exchange waits for the provider on a worker thread: the api keeps serving."""
    w = world
    code = "slow-" + uuid.uuid4().hex
    w["idp"].codes[code] = w["user"]
    out = {}
    t = threading.Thread(target=lambda: out.update(r=login(w, {"code": code})))
    t.start()
    time.sleep(0.5)
    a = time.monotonic()
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % w["http"], timeout=10) as r:
        assert r.status == 200
    assert time.monotonic() - a < 1.5
    t.join(15)
    assert out["r"][0] == 200 and out["r"][1]["exists"] is True


def test_user_without_lock(world):
    st, r = login(world, {"id_token": world["keys"].token(claims(world, sub=world["stranger"]))})
    assert st == 200 and r["exists"] is False and "password" not in r


def test_https_only_and_bad_body(world):
    st, r = login(world, {"id_token": "x"}, scheme="http")
    assert st == 403 and r["code"] == "HTTPS_REQUIRED"
    st, r = login(world, {"nothing": 1})
    assert st == 400 and r["code"] == "BAD_REQUEST"


def test_rate_limited(world):
    """Last: the address is over its budget for a while afterwards."""
    codes = [login(world, {"code": "wrong-%d" % i})[0] for i in range(45)]
    assert 429 in codes and set(codes) <= {401, 429}
    st, r = login(world, {"id_token": world["keys"].token(claims(world))})
    assert st == 429 and r["code"] == "TOO_MANY_REQUESTS"
