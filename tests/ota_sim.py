#!/usr/bin/python3
"""ota_sim: one process playing many OTA devices against a Latchkey broker.

Each device is a real MQTT connection (asyncio, MQTT 3.1.1 or 5 on the wire) speaking
ThingsBoard's device OTA protocol (--protocol tb) or Latchkey's (--protocol lk, MQTT 5
request/response, or 3.1.1 with --v311), as docs/ota.md describes. A device reports its
version on connect, takes the offer it gets, downloads in chunks (resuming from what it
has after a lost answer or a reconnect), checks the SHA-256 and (with --pubkey) the
Ed25519 signature, "installs", reconnects as after a reboot and reports its new version.

Faults (each: a comma list of device ids, or a fraction like 0.1 of the devices):
  --refuse      report FAILED when offered
  --corrupt     flip a byte of a received chunk: the SHA-256 check fails, FAILED
  --drop        disconnect once in the middle of the download, reconnect, resume
  --old         after the reboot report the old version (the update did not take)

Devices: --devices FILE (lines "id token model version") or --device id:token:model:version.
Prints one JSON line per device when it is done and a summary line at the end; exits when
every device is done (updated/failed) or after --timeout seconds.
"""
import argparse
import asyncio
import hashlib
import json
import random
import struct
import time

try:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
except ImportError:  # pragma: no cover
    load_pem_public_key = None


def varint(n):
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s16(b):
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("!H", len(b)) + b


class Mqtt:
    """A minimal MQTT client: what a device needs (QoS 0/1 publish, subscribe, receive)."""

    def __init__(self, host, port, v5):
        self.host, self.port, self.v5 = host, port, v5
        self.pid = 0
        self.on_message = None
        self.closed = asyncio.Event()
        self.acks = {}

    async def connect(self, client_id, username, timeout=10):
        self.r, self.w = await asyncio.wait_for(asyncio.open_connection(self.host, self.port),
                                                timeout)
        ver = 5 if self.v5 else 4
        flags = 0x02 | (0x80 if username else 0)
        body = s16("MQTT") + bytes([ver, flags]) + struct.pack("!H", 60)
        if self.v5:
            body += varint(0)
        body += s16(client_id) + (s16(username) if username else b"")
        self.w.write(bytes([0x10]) + varint(len(body)) + body)
        t, data = await asyncio.wait_for(self._read(), timeout)
        rc = data[1] if len(data) > 1 else 255
        if t != 2 or rc != 0:
            raise ConnectionError("CONNACK %d" % rc)
        self.task = asyncio.ensure_future(self._loop())
        self.ping = asyncio.ensure_future(self._pinger())

    async def _read(self):
        h = await self.r.readexactly(1)
        mult, n = 1, 0
        while True:
            b = (await self.r.readexactly(1))[0]
            n += (b & 127) * mult
            mult *= 128
            if not b & 128:
                break
        data = await self.r.readexactly(n) if n else b""
        return h[0] >> 4, (h[0], data) if h[0] >> 4 == 3 else data

    async def _pinger(self):
        try:
            while True:
                await asyncio.sleep(30)
                self.w.write(b"\xc0\x00")
        except (asyncio.CancelledError, ConnectionError):
            pass

    async def _loop(self):
        try:
            while True:
                t, data = await self._read()
                if t == 4 and len(data) >= 2:  # PUBACK
                    f = self.acks.pop(struct.unpack("!H", data[:2])[0], None)
                    if f and not f.done():
                        f.set_result(True)
                if t != 3:
                    continue
                first, body = data
                qos = (first >> 1) & 3
                tl = struct.unpack("!H", body[:2])[0]
                topic = body[2:2 + tl].decode()
                i = 2 + tl
                pid = None
                if qos:
                    pid = struct.unpack("!H", body[i:i + 2])[0]
                    i += 2
                props = {}
                if self.v5:
                    plen, mult, k = 0, 1, i
                    while True:
                        b = body[k]
                        k += 1
                        plen += (b & 127) * mult
                        mult *= 128
                        if not b & 128:
                            break
                    props = self._props(body[k:k + plen])
                    i = k + plen
                payload = body[i:]
                if qos == 1:
                    self.w.write(b"\x40\x02" + struct.pack("!H", pid))
                if self.on_message:
                    self.on_message(topic, payload, props)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.closed.set()

    @staticmethod
    def _props(b):
        out, i, users = {}, 0, {}
        while i < len(b):
            pid = b[i]
            i += 1
            if pid in (0x08, 0x09, 0x03):  # response topic, correlation data, content type
                n = struct.unpack("!H", b[i:i + 2])[0]
                out[pid] = b[i + 2:i + 2 + n]
                i += 2 + n
            elif pid == 0x26:
                n = struct.unpack("!H", b[i:i + 2])[0]
                k = b[i + 2:i + 2 + n].decode()
                i += 2 + n
                n = struct.unpack("!H", b[i:i + 2])[0]
                users[k] = b[i + 2:i + 2 + n].decode()
                i += 2 + n
            elif pid == 0x01:
                i += 1
            elif pid == 0x02:
                i += 4
            else:
                break
        out["user"] = users
        return out

    def subscribe(self, *topics):
        self.pid = self.pid % 65535 + 1
        body = struct.pack("!H", self.pid) + (varint(0) if self.v5 else b"")
        for t in topics:
            body += s16(t) + b"\x01"
        self.w.write(bytes([0x82]) + varint(len(body)) + body)

    def publish(self, topic, payload, qos=0, response_topic=None, corr=None):
        payload = payload.encode() if isinstance(payload, str) else payload
        body = s16(topic)
        if qos:
            self.pid = self.pid % 65535 + 1
            body += struct.pack("!H", self.pid)
        if self.v5:
            p = b""
            if response_topic:
                p += b"\x08" + s16(response_topic)
            if corr:
                p += b"\x09" + s16(corr)
            body += varint(len(p)) + p
        body += payload
        self.w.write(bytes([0x30 | (qos << 1)]) + varint(len(body)) + body)
        if qos:
            f = asyncio.get_running_loop().create_future()
            self.acks[self.pid] = f
            return f
        return None

    async def close(self):
        for t in (getattr(self, "task", None), getattr(self, "ping", None)):
            if t:
                t.cancel()
        try:
            self.w.write(b"\xe0\x00")
            self.w.close()
        except Exception:
            pass


class Device:
    def __init__(self, sim, dev_id, token, model, version, proto, v5):
        self.sim, self.id, self.token, self.model = sim, dev_id, token, model
        self.version, self.proto, self.v5 = version, proto, v5
        self.offer = None
        self.image = bytearray()
        self.result = None
        self.error = ""
        self.wake = asyncio.Event()
        self.inbox = asyncio.Queue()
        self.faults = set()
        self.dropped = False
        self.req_id = random.randint(1, 10**6)
        self.chunks = 0
        self.started = None

    # ---- wire ------------------------------------------------------------------------
    def on_message(self, topic, payload, props):
        self.inbox.put_nowait((topic, payload, props))

    async def connect(self):
        for attempt in range(60):
            self.m = Mqtt(self.sim.host, self.sim.port, self.v5)
            self.m.on_message = self.on_message
            try:
                await self.m.connect(self.id, self.token)
                break
            except (OSError, ConnectionError, asyncio.TimeoutError):
                await asyncio.sleep(0.5 + random.random())
        else:
            raise ConnectionError("%s cannot connect" % self.id)
        if self.proto == "tb":
            self.m.subscribe("v1/devices/me/attributes", "v1/devices/me/attributes/response/+",
                             "v2/fw/response/+/chunk/+", "v2/fw/error")
            self.telemetry({"current_fw_title": self.model, "current_fw_version": self.version})
            self.m.publish("v1/devices/me/attributes/request/1", json.dumps(
                {"sharedKeys": "fw_title,fw_version,fw_size,fw_checksum,"
                               "fw_checksum_algorithm,fw_signature"}))
        else:
            self.m.subscribe("lk/ota/%s/#" % self.id)
            self.status()

    def telemetry(self, d):
        return self.m.publish("v1/devices/me/telemetry", json.dumps(d), qos=1)

    def status(self, state=None, error=None):
        d = {"model": self.model, "version": self.version}
        if state:
            d["state"] = state
        if error:
            d["error"] = error
        return self.m.publish("lk/ota/%s/status" % self.id, json.dumps(d), qos=1)

    def report(self, state, error=None):
        if self.proto == "tb":
            d = {"fw_state": state}
            if error:
                d["fw_error"] = error
            return self.telemetry(d)
        return self.status(state.lower(), error)

    async def report_acked(self, state, error=None):
        try:
            await asyncio.wait_for(self.report(state, error), 10)
        except asyncio.TimeoutError:
            pass

    # ---- offers ------------------------------------------------------------------------
    def _offer_of(self, topic, payload):
        try:
            j = json.loads(payload)
        except ValueError:
            return None
        if self.proto == "tb":
            if topic.startswith("v1/devices/me/attributes/response/"):
                j = j.get("shared", {})
            elif topic != "v1/devices/me/attributes":
                return None
            if "fw_version" not in j or "fw_size" not in j:
                return None
            return {"version": j["fw_version"], "size": int(j["fw_size"]),
                    "sha256": j.get("fw_checksum"), "signature": j.get("fw_signature")}
        if not topic.endswith("/offer"):
            return None
        return {"version": j["version"], "size": int(j["size"]), "sha256": j["sha256"],
                "signature": j.get("signature")}

    async def next_offer(self, deadline):
        asked = time.monotonic()
        while time.monotonic() < deadline:
            try:
                topic, payload, props = await asyncio.wait_for(self.inbox.get(), 1)
            except asyncio.TimeoutError:
                if self.m.closed.is_set():
                    await self.connect()
                elif time.monotonic() - asked > self.sim.retry:
                    asked = time.monotonic()  # ask again, as after a reconnect
                    if self.proto == "tb":
                        self.m.publish("v1/devices/me/attributes/request/2", json.dumps(
                            {"sharedKeys": "fw_title,fw_version,fw_size,fw_checksum,"
                                           "fw_checksum_algorithm,fw_signature"}))
                    else:
                        self.status()
                continue
            o = self._offer_of(topic, payload)
            if o and o["version"] != self.version:
                return o
        return None

    # ---- download ----------------------------------------------------------------------
    def _request(self, offset, size, n):
        if self.proto == "tb":
            self.m.publish("v2/fw/request/%d/chunk/%d" % (self.req_id, n), str(size))
        elif self.v5:
            self.m.publish("lk/ota/%s/req" % self.id, json.dumps(
                {"sha256": self.offer["sha256"], "offset": offset, "length": size}),
                response_topic="lk/ota/%s/resp" % self.id, corr=b"c%d" % offset)
        else:
            self.m.publish("lk/ota/%s/req" % self.id, json.dumps(
                {"sha256": self.offer["sha256"], "offset": offset, "length": size}))

    def _answer(self, topic, payload, props, offset):
        """the bytes when this message answers the request at offset, else None"""
        if self.proto == "tb":
            want = "v2/fw/response/%d/chunk/" % self.req_id
            if topic.startswith(want) and int(topic[len(want):]) * self.sim.chunk == offset:
                return payload
        elif self.v5:
            if topic == "lk/ota/%s/resp" % self.id and props.get(0x09) == b"c%d" % offset:
                assert props["user"].get("offset") == str(offset)
                return payload
        elif topic == "lk/ota/%s/chunk/%d" % (self.id, offset):
            return payload
        if topic.endswith("/error"):
            self.error = payload.decode(errors="replace")
        return None

    async def download(self, deadline):
        size, chunk = self.offer["size"], self.sim.chunk
        while len(self.image) < size and time.monotonic() < deadline:
            offset = len(self.image)
            if "drop" in self.faults and not self.dropped and offset >= size // 2:
                self.dropped = True
                await self.m.close()
                await asyncio.sleep(0.5)
                await self.connect()
            self._request(offset, chunk, offset // chunk)
            got = None
            t_end = time.monotonic() + self.sim.retry
            while got is None and time.monotonic() < t_end:
                try:
                    topic, payload, props = await asyncio.wait_for(self.inbox.get(),
                                                                   t_end - time.monotonic())
                except asyncio.TimeoutError:
                    break
                got = self._answer(topic, payload, props, offset)
            if got is None:
                if self.m.closed.is_set():
                    await self.connect()
                continue  # lost or refused: ask again from the same offset
            if not got:
                break
            self.chunks += 1
            self.image += got
        return len(self.image) >= size

    def verify(self):
        if "corrupt" in self.faults and self.image:
            self.image[len(self.image) // 2] ^= 0xFF
        digest = hashlib.sha256(self.image).digest()
        if digest.hex() != self.offer["sha256"]:
            return "checksum mismatch"
        if self.sim.pubkey is not None:
            try:
                import base64
                self.sim.pubkey.verify(base64.b64decode(self.offer["signature"] or ""), digest)
            except Exception:
                return "signature does not verify"
        return None

    async def run(self, deadline):
        try:
            await self.connect()
            while time.monotonic() < deadline:
                self.offer = await self.next_offer(deadline)
                if not self.offer:
                    self.result = "no offer"
                    return
                self.started = time.monotonic()
                if "refuse" in self.faults:
                    await self.report_acked("FAILED", "refused by the device")
                    self.result = "failed"
                    return
                self.image = bytearray()
                self.report("DOWNLOADING")
                if not await self.download(deadline):
                    self.result = "timeout"
                    return
                err = self.verify()
                if err:
                    await self.report_acked("FAILED", err)
                    self.result, self.error = "failed", err
                    return
                self.report("DOWNLOADED")
                self.report("VERIFIED")
                self.report("UPDATING")
                await asyncio.sleep(0.2)
                await self.m.close()  # the reboot
                old = self.version
                if "old" not in self.faults:
                    self.version = self.offer["version"]
                await asyncio.sleep(0.3)
                await self.connect()
                if self.proto == "tb":
                    acked = self.telemetry({"current_fw_title": self.model,
                                            "current_fw_version": self.version,
                                            "fw_state": "UPDATED"})
                else:
                    acked = self.status("updated")
                try:  # the report is delivered before we hang up
                    await asyncio.wait_for(acked, 10)
                except asyncio.TimeoutError:
                    pass
                self.result = "updated" if self.version != old else "old version"
                return
        except Exception as e:  # a device that dies is a result too
            self.result, self.error = "crashed", repr(e)
        finally:
            try:
                await asyncio.sleep(0.3)
                await self.m.close()
            except Exception:
                pass


def pick(spec, ids):
    if not spec:
        return set()
    try:
        f = float(spec)
        if 0 < f < 1 or spec.startswith("0."):
            n = int(round(f * len(ids)))
            return set(sorted(ids)[:n])
    except ValueError:
        pass
    return set(spec.split(","))


async def main(a):
    a.pubkey = None
    if a.pubkey_file:
        with open(a.pubkey_file, "rb") as f:
            a.pubkey = load_pem_public_key(f.read())
    rows = []
    if a.devices:
        with open(a.devices) as f:
            rows = [line.split() for line in f if line.strip()]
    rows += [d.split(":") for d in a.device]
    devs = [Device(a, r[0], r[1], r[2], r[3], a.protocol, not a.v311) for r in rows]
    ids = [d.id for d in devs]
    for fault in ("refuse", "corrupt", "drop", "old"):
        for i in pick(getattr(a, fault), ids):
            for d in devs:
                if d.id == i:
                    d.faults.add(fault)
    deadline = time.monotonic() + a.timeout
    t0 = time.monotonic()
    async def one(d):
        await asyncio.sleep(random.random() * a.stagger)  # not every device at once
        await d.run(deadline)
        print(json.dumps({"device": d.id, "result": d.result, "version": d.version,
                          "chunks": d.chunks, "error": d.error,
                          "seconds": round(time.monotonic() - (d.started or t0), 3)}),
              flush=True)

    await asyncio.gather(*(one(d) for d in devs))
    summary = {}
    for d in devs:
        summary[d.result] = summary.get(d.result, 0) + 1
    print(json.dumps({"summary": summary, "seconds": round(time.monotonic() - t0, 3)}),
          flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--protocol", choices=("tb", "lk"), default="tb")
    p.add_argument("--v311", action="store_true", help="lk: the MQTT 3.1.1 form")
    p.add_argument("--devices", help="file: id token model version per line")
    p.add_argument("--device", action="append", default=[], help="id:token:model:version")
    p.add_argument("--chunk", type=int, default=16384)
    p.add_argument("--retry", type=float, default=5.0, help="seconds before a chunk is asked again")
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--pubkey", dest="pubkey_file")
    p.add_argument("--stagger", type=float, default=1.0, help="seconds over which devices start")
    for f in ("refuse", "corrupt", "drop", "old"):
        p.add_argument("--" + f, default="")
    asyncio.run(main(p.parse_args()))
