// MQTT.js round trip: `node roundtrip.js <url> <4|5> [cafile]` subscribes at QoS 2,
// publishes QoS 0, 1 and 2 to itself (v5 with a user property), checks what comes back,
// exits 0 on success. <url> is mqtt://127.0.0.1:<port>, ws://127.0.0.1:<port>/mqtt,
// mqtts://... or wss://...; for the TLS ones, cafile is the CA the server's certificate is
// verified against (verification is on).
const fs = require('fs');
const mqtt = require('mqtt');
const [url, ver, cafile] = process.argv.slice(2);
const v = Number(ver);
const topic = `interop/mqttjs/${process.pid}/${v}`;
const tls = cafile ? { ca: fs.readFileSync(cafile), rejectUnauthorized: true } : {};
const c = mqtt.connect(url, { protocolVersion: v, clientId: `mqttjs-${process.pid}-${v}`,
                              connectTimeout: 5000, reconnectPeriod: 0, ...tls });
const fail = (why) => { console.error('mqtt.js:', why); process.exit(1); };
setTimeout(() => fail('timeout'), 10000).unref();
const got = [];
c.on('error', (e) => fail(e.message));
c.on('message', (t, payload, packet) => {
  got.push(packet);
  if (got.length < 3) return;
  const qos = got.map((p) => p.qos).sort().join(',');
  if (qos !== '0,1,2') fail(`qos ${qos}`);
  if (v === 5 && !got.every((p) => p.properties && p.properties.userProperties &&
                             p.properties.userProperties.k === 'v')) fail('user property lost');
  console.log(`mqtt.js v${v}: ok`);
  c.end(false, () => process.exit(0));
});
c.on('connect', () => {
  c.subscribe(topic, { qos: 2 }, (err, granted) => {
    if (err || granted[0].qos !== 2) fail('subscribe ' + (err ? err.message : granted[0].qos));
    const opts = v === 5 ? { properties: { userProperties: { k: 'v' } } } : {};
    for (const qos of [0, 1, 2]) c.publish(topic, `qos ${qos}`, { qos, ...opts });
  });
});
