"""sechelp: helpers of the security tests (test_43_auth, test_44_limits, test_45_revocation).

The shared stack runs with allow_anonymous true and default limits, so tests that need
another configuration start their own real processes next to it: an `auth` on its own ipc
endpoint and/or an `mqtt-frontend` on its own port, both reading supervise/latchkey.conf
with LATCHKEY_<KEY> overrides, and both using the stack's router, session store and Redis.
Each is started with a readiness pipe (-r) and stopped with SIGTERM (SIGKILL after 5 s).
"""

import os
import socket
import subprocess
import time

import lk

CONF = os.path.join(lk.ROOT, "supervise", "latchkey.conf")
_seq = [0]


def _env(stack, overrides):
    env = dict(stack.env)
    env["LATCHKEY_CONF"] = CONF
    env["LATCHKEY_ROOT"] = lk.ROOT
    # several processes with one node name must not share message-log files
    env.pop("LATCHKEY_MSGLOG_DIR", None)
    for k, v in overrides.items():
        env["LATCHKEY_" + k.upper()] = str(v)
    return env


class Proc:
    """One daemon started by hand: name (node id), log (its stderr, a file), stop()."""

    def __init__(self, stack, binary, node, overrides, timeout=15):
        self.node = node
        _seq[0] += 1
        self.logpath = os.path.join(stack.run_dir, "sec-%s-%d-%d.log" % (node, os.getpid(),
                                                                        _seq[0]))
        r, w = os.pipe()
        with open(self.logpath, "ab") as logf:
            self.p = subprocess.Popen(
                [os.path.join(stack.build, "bin", binary), "-c", CONF, "-n", node, "-r", str(w)],
                env=_env(stack, overrides), stdin=subprocess.DEVNULL, stdout=logf,
                stderr=subprocess.STDOUT, pass_fds=(w,), cwd=stack.run_dir)
        os.close(w)
        try:
            deadline = time.monotonic() + timeout
            got = b""
            os.set_blocking(r, False)
            while b"\n" not in got:
                if self.p.poll() is not None:
                    raise RuntimeError("%s exited %s before ready:\n%s"
                                       % (node, self.p.returncode, self.log()))
                if time.monotonic() > deadline:
                    raise TimeoutError("%s not ready within %ss:\n%s" % (node, timeout, self.log()))
                try:
                    got += os.read(r, 64)
                except BlockingIOError:
                    time.sleep(0.02)
        except BaseException:
            self.stop()
            raise
        finally:
            os.close(r)

    def log(self):
        with open(self.logpath, errors="replace") as f:
            return f.read()

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def auth(stack, **overrides):
    """An auth process on its own ipc endpoint; .endpoint is where it serves."""
    _seq[0] += 1
    endpoint = "ipc://%s/ipc/sec-auth-%d-%d.ipc" % (stack.run_dir, os.getpid(), _seq[0])
    overrides.setdefault("auth_endpoint", endpoint)
    p = Proc(stack, "auth", "auth", overrides)
    p.endpoint = overrides["auth_endpoint"]
    return p


def frontend(stack, **overrides):
    """An mqtt-frontend on its own port (.port), against the stack's router and session
    store (and the stack's auth unless auth_endpoint is given)."""
    _seq[0] += 1
    port = lk.free_port({stack.mqtt_port, stack.redis_port, stack.pg_port})
    overrides.setdefault("listener", "%d 127.0.0.1" % port)
    p = Proc(stack, "mqtt-frontend", "fe-sec-%d-%d" % (os.getpid(), _seq[0]), overrides)
    p.port = port
    p.mqtt_port = port
    return p


def cli(stack, *args, check=True, timeout=30, **overrides):
    """`latchkey <args>` with the stack's configuration plus overrides."""
    p = subprocess.run([os.path.join(stack.build, "bin", "latchkey")] + [str(a) for a in args],
                       env=_env(stack, overrides), capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise AssertionError("latchkey %s: exit %d\n%s%s" % (" ".join(map(str, args)),
                                                          p.returncode, p.stdout, p.stderr))
    return p


# ---- raw MQTT, for exact reason codes ------------------------------------------------------
def _varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _s(b):
    if isinstance(b, str):
        b = b.encode()
    return len(b).to_bytes(2, "big") + b


def packet(ptype_flags, body):
    return bytes([ptype_flags]) + _varint(len(body)) + body


def connect_packet(client_id, version=4, username=None, password=None, keepalive=60):
    flags = 0x02
    payload = _s(client_id)
    if username is not None:
        flags |= 0x80
        payload += _s(username)
    if password is not None:
        flags |= 0x40
        payload += _s(password)
    var = _s("MQTT") + bytes([version, flags]) + keepalive.to_bytes(2, "big")
    if version == 5:
        var += b"\x00"
    return packet(0x10, var + payload)


def publish_packet(topic, payload, qos=0, pid=1, version=4):
    var = _s(topic) + (pid.to_bytes(2, "big") if qos else b"")
    if version == 5:
        var += b"\x00"
    return packet(0x30 | (qos << 1), var + payload)


def subscribe_packet(filters, pid=1, version=4):
    var = pid.to_bytes(2, "big") + (b"\x00" if version == 5 else b"")
    body = b"".join(_s(f) + bytes([q]) for f, q in filters)
    return packet(0x82, var + body)


class Raw:
    """A raw MQTT connection: send(bytes), read_packet() -> (type<<4|flags, body) or None
    at EOF, closed(timeout)."""

    def __init__(self, port, timeout=5.0):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def _fill(self, n, timeout):
        self.s.settimeout(timeout)
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def read_packet(self, timeout=5.0):
        if not self._fill(2, timeout):
            return None
        mult, length, i = 1, 0, 1
        while True:
            if not self._fill(i + 1, timeout):
                return None
            b = self.buf[i]
            length += (b & 0x7F) * mult
            mult *= 128
            i += 1
            if not b & 0x80:
                break
        if not self._fill(i + length, timeout):
            return None
        head, body = self.buf[0], self.buf[i:i + length]
        self.buf = self.buf[i + length:]
        return head, body

    def closed(self, timeout=5.0):
        """True when the server closes the connection within timeout (packets before the
        close are skipped)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.s.settimeout(max(0.05, deadline - time.monotonic()))
                if not self.s.recv(65536):
                    return True
        except socket.timeout:
            return False
        except OSError:
            return True
        return False

    def close(self):
        self.s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def raw_connect(port, client_id, version=4, username=None, password=None, timeout=5.0):
    """A Raw connection after CONNECT; returns (raw, connack return/reason code)."""
    r = Raw(port, timeout)
    r.send(connect_packet(client_id, version, username, password))
    pkt = r.read_packet(timeout)
    assert pkt and pkt[0] == 0x20, "no CONNACK: %r" % (pkt,)
    return r, pkt[1][1]
