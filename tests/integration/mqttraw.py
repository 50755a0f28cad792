"""Byte-level MQTT for conformance tests: build packets by hand, read what the broker
answers. Only what the tests need; no validation of our own beyond framing."""
import socket
import struct


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def packet(first_byte, body):
    return bytes([first_byte]) + varint(len(body)) + body


def props(*items):
    """items: already-encoded (id byte + value) properties."""
    body = b"".join(items)
    return varint(len(body)) + body


def connect(client_id, version=4, clean=True, keepalive=60, properties=b"", will=None,
            username=None, password=None):
    name = b"MQIsdp" if version == 3 else b"MQTT"
    flags = 0x02 if clean else 0
    payload = utf8(client_id)
    if will:
        flags |= 0x04 | (will.get("qos", 0) << 3) | (0x20 if will.get("retain") else 0)
        if version == 5:
            payload += props()
        payload += utf8(will["topic"]) + utf8(will["payload"])
    if username is not None:
        flags |= 0x80
        payload += utf8(username)
    if password is not None:
        flags |= 0x40
        payload += utf8(password)
    vh = utf8(name) + bytes([version, flags]) + struct.pack("!H", keepalive)
    if version == 5:
        vh += properties if properties else props()
    return packet(0x10, vh + payload)


def publish(topic, payload, qos=0, pid=1, retain=False, dup=False, version=4, properties=b""):
    vh = utf8(topic)
    if qos:
        vh += struct.pack("!H", pid)
    if version == 5:
        vh += properties if properties else props()
    return packet(0x30 | (qos << 1) | (1 if retain else 0) | (8 if dup else 0), vh + payload)


def subscribe(pid, filters, version=4, properties=b""):
    body = struct.pack("!H", pid)
    if version == 5:
        body += properties if properties else props()
    for f, opts in filters:
        body += utf8(f) + bytes([opts])
    return packet(0x82, body)


class Conn:
    def __init__(self, port, timeout=5):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def read_packet(self, timeout=5):
        """(type, flags, body) of the next packet, or None when the connection closed."""
        self.s.settimeout(timeout)
        while True:
            if len(self.buf) >= 2:
                mult, n, i = 1, 0, 1
                while i < len(self.buf):
                    b = self.buf[i]
                    n += (b & 127) * mult
                    mult *= 128
                    i += 1
                    if not b & 128:
                        break
                else:
                    i = None
                if i is not None and len(self.buf) >= i + n and not (self.buf[i - 1] & 128):
                    first = self.buf[0]
                    body = self.buf[i:i + n]
                    self.buf = self.buf[i + n:]
                    return first >> 4, first & 15, body
            chunk = self.s.recv(65536)
            if not chunk:
                return None
            self.buf += chunk

    def closed(self, timeout=5):
        """True when the broker closes the connection (after reading anything pending)."""
        self.s.settimeout(timeout)
        try:
            while True:
                if self.read_packet(timeout) is None:
                    return True
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def close(self):
        self.s.close()
