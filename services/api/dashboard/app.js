/* The Latchkey dashboard: a page over the api's own REST API (/api/v5, HTTP Basic with an
   API key kept in this tab's sessionStorage). Charts: uPlot, vendored at build time. */
'use strict';

const $ = (id) => document.getElementById(id);
let auth = sessionStorage.getItem('lk-auth');
let timer = null;
const POLL_MS = 2000;
const HISTORY = 150; /* points kept per chart (5 minutes) */

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: 'Basic ' + auth } };
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const r = await fetch('/api/v5' + path, opts);
  if (r.status === 401) { logout('key or secret refused'); throw new Error('unauthorised'); }
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) throw new Error((data && data.message) || r.statusText);
  return data;
}

function text(s) { return s === null || s === undefined ? '' : String(s); }
function cell(tr, v, cls) { const td = document.createElement('td'); td.textContent = text(v); if (cls) td.className = cls; tr.appendChild(td); return td; }
function button(td, label, fn, id) { const b = document.createElement('button'); b.textContent = label; if (id) b.id = id; b.onclick = fn; td.appendChild(b); return b; }
function fill(tableId, rows, render) {
  const tb = document.querySelector('#' + tableId + ' tbody');
  tb.replaceChildren();
  for (const r of rows) { const tr = document.createElement('tr'); render(tr, r); tb.appendChild(tr); }
}
function bytes(n) { return n > 1 << 20 ? (n / (1 << 20)).toFixed(1) + ' MiB' : Math.round(n / 1024) + ' KiB'; }
function dur(ms) { const s = Math.floor(ms / 1000); return s > 3600 ? Math.floor(s / 3600) + ' h' : s > 60 ? Math.floor(s / 60) + ' min' : s + ' s'; }
function status(s) { $('status').textContent = s; }

/* --- charts --------------------------------------------------------------------------- */
function chart(el, series) {
  const data = [[]].concat(series.map(() => []));
  const opts = { width: 460, height: 200, series: [{}].concat(series.map((s) => ({ label: s.label, stroke: s.color, width: 2 }))),
    axes: [{}, { size: 50 }], scales: { x: { time: true } } };
  return { plot: new uPlot(opts, data, $(el)), data };
}
function push(c, t, values) {
  c.data[0].push(t);
  values.forEach((v, i) => c.data[i + 1].push(v));
  if (c.data[0].length > HISTORY) c.data.forEach((a) => a.shift());
  c.plot.setData(c.data);
}
let charts = null;
let lastMetrics = null;

/* --- tabs ----------------------------------------------------------------------------- */
function tab() { return (location.hash || '#overview').slice(1); }
function show() {
  for (const s of document.querySelectorAll('.tab')) s.hidden = s.id !== tab();
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.tab === tab());
  refresh();
}
window.addEventListener('hashchange', show);

async function overview() {
  const [stats, metrics, nodes] = await Promise.all([api('GET', '/stats?aggregate=true'),
    api('GET', '/metrics?aggregate=true'), api('GET', '/nodes')]);
  $('c-connections').textContent = stats['connections.count'];
  $('c-subscriptions').textContent = stats['subscriptions.count'];
  $('c-retained').textContent = stats['retained.count'];
  const now = Date.now() / 1000;
  let rin = 0, rout = 0;
  if (lastMetrics) {
    const dt = now - lastMetrics.t;
    rin = Math.max(0, (metrics['messages.received'] - lastMetrics.m['messages.received']) / dt);
    rout = Math.max(0, (metrics['messages.sent'] - lastMetrics.m['messages.sent']) / dt);
  }
  lastMetrics = { t: now, m: metrics };
  $('c-rate-in').textContent = rin.toFixed(1);
  $('c-rate-out').textContent = rout.toFixed(1);
  push(charts.conn, now, [stats['connections.count']]);
  push(charts.rates, now, [rin, rout]);
  fill('nodes', nodes, (tr, n) => {
    cell(tr, n.node); cell(tr, n.kind); cell(tr, n.node_status, n.node_status === 'running' ? 'on' : 'off');
    cell(tr, n.version); cell(tr, n.uptime !== undefined ? dur(n.uptime) : '');
    cell(tr, n.memory_used !== undefined ? bytes(n.memory_used) : ''); cell(tr, n.kind === 'mqtt-frontend' ? n.connections : '');
  });
}

async function clients() {
  const q = new URLSearchParams({ limit: '100' });
  if ($('client-like').value) q.set('like_clientid', $('client-like').value);
  if ($('client-state').value) q.set('conn_state', $('client-state').value);
  const r = await api('GET', '/clients?' + q);
  fill('client-table', r.data, (tr, c) => {
    tr.dataset.clientid = c.clientid;
    cell(tr, c.clientid); cell(tr, c.username); cell(tr, c.node);
    cell(tr, c.ip_address ? c.ip_address + ':' + c.port : ''); cell(tr, c.proto_ver ? 'MQTT ' + c.proto_ver : '');
    cell(tr, c.connected ? c.connected_at : 'no', c.connected ? 'on' : 'off');
    cell(tr, c.subscriptions_cnt); cell(tr, c.mqueue_len);
    button(cell(tr, ''), c.connected ? 'Kick' : 'Clear session', async () => {
      await api('DELETE', '/clients/' + encodeURIComponent(c.clientid));
      status('kicked ' + c.clientid);
      refresh();
    }, 'kick-' + c.clientid);
  });
  $('client-meta').textContent = r.meta.count + ' client(s)';
}

async function subscriptions() {
  const q = new URLSearchParams({ limit: '200' });
  if ($('sub-client').value) q.set('clientid', $('sub-client').value);
  const r = await api('GET', '/subscriptions?' + q);
  fill('sub-table', r.data, (tr, s) => { cell(tr, s.clientid); cell(tr, s.topic); cell(tr, s.qos); cell(tr, s.node); });
}

async function retained() {
  const r = await api('GET', '/mqtt/retainer/messages?limit=200');
  fill('ret-table', r.data, (tr, m) => {
    cell(tr, m.topic); cell(tr, m.qos); cell(tr, m.from_clientid);
    const td = cell(tr, '');
    const path = '/mqtt/retainer/message/' + encodeURIComponent(m.topic);
    button(td, 'View', async () => {
      const one = await api('GET', path);
      let p = atob(one.payload);
      $('ret-view').textContent = m.topic + '\n' + p;
    });
    button(td, 'Delete', async () => { await api('DELETE', path); refresh(); });
  });
}

async function bans() {
  const r = await api('GET', '/banned?limit=200');
  fill('ban-table', r.data, (tr, b) => {
    cell(tr, b.as); cell(tr, b.who); cell(tr, b.reason); cell(tr, b.until);
    button(cell(tr, ''), 'Lift', async () => {
      await api('DELETE', '/banned/' + b.as + '/' + encodeURIComponent(b.who)); refresh();
    });
  });
}

/* the lock-arbiter's counters, read from the Prometheus text */
async function locks() {
  const r = await fetch('/api/v5/prometheus/stats', { headers: { Authorization: 'Basic ' + auth } });
  const lines = (await r.text()).split('\n');
  const v = (name, label) => {
    let sum = 0;
    for (const l of lines) if (l.startsWith(name + '{') && (!label || l.includes(label))) sum += Number(l.split(' ').pop());
    return sum;
  };
  const g = v('latchkey_lock_decisions_total', 'outcome="granted"');
  const f = v('latchkey_lock_decisions_total', 'outcome="refused"');
  const e = v('latchkey_lock_decisions_total', 'outcome="expired"');
  $('l-granted').textContent = g; $('l-refused').textContent = f; $('l-expired').textContent = e;
  $('l-states').textContent = v('latchkey_lock_state_changes_total');
  $('l-logins').textContent = v('latchkey_lock_logins_total');
  push(charts.locks, Date.now() / 1000, [g, f, e]);
  const [ls, ds] = await Promise.all([api('GET', '/latchkey/locks?limit=200').catch(() => ({ data: [] })),
    api('GET', '/latchkey/decisions?limit=20').catch(() => ({ data: [] }))]);
  fill('lock-table', ls.data, (tr, l) => { cell(tr, l.lock); cell(tr, l.state, l.state === 'offline' ? 'off' : 'on'); });
  fill('decision-table', ds.data, (tr, d) => {
    cell(tr, new Date(d.time).toLocaleString()); cell(tr, d.lock); cell(tr, d.decision); cell(tr, d.actor);
  });
}

const views = { overview, clients, subscriptions, retained, bans, locks };
async function refresh() {
  if (!auth) return;
  try { await views[tab()](); status('updated ' + new Date().toLocaleTimeString()); }
  catch (e) { status('error: ' + e.message); }
}

/* --- login ---------------------------------------------------------------------------- */
function start() {
  $('login').hidden = true;
  $('app').hidden = false;
  $('tabs').hidden = false;
  $('who').textContent = atob(auth).split(':')[0];
  if (!charts) {
    charts = { conn: chart('chart-connections', [{ label: 'connections', color: '#4f8cff' }]),
      rates: chart('chart-rates', [{ label: 'in', color: '#1e8e3e' }, { label: 'out', color: '#e67e22' }]),
      locks: chart('chart-locks', [{ label: 'granted', color: '#1e8e3e' }, { label: 'refused', color: '#c0392b' }, { label: 'expired', color: '#999' }]) };
  }
  show();
  timer = setInterval(refresh, POLL_MS);
}
function logout(why) {
  sessionStorage.removeItem('lk-auth');
  auth = null;
  clearInterval(timer);
  $('login').hidden = false; $('app').hidden = true; $('tabs').hidden = true;
  $('login-error').textContent = why || '';
}
$('login-form').onsubmit = async (ev) => {
  ev.preventDefault();
  auth = btoa($('key').value + ':' + $('secret').value);
  try {
    await api('GET', '/nodes');
    sessionStorage.setItem('lk-auth', auth);
    $('login-error').textContent = '';
    start();
  } catch (e) { if (auth) logout(e.message); }
};
$('client-search').onsubmit = (ev) => { ev.preventDefault(); refresh(); };
$('sub-search').onsubmit = (ev) => { ev.preventDefault(); refresh(); };
$('ban-form').onsubmit = async (ev) => {
  ev.preventDefault();
  const b = { as: $('ban-as').value, who: $('ban-who').value, reason: $('ban-reason').value };
  const m = Number($('ban-minutes').value);
  if (m > 0) b.until = new Date(Date.now() + m * 60000).toISOString();
  try { await api('POST', '/banned', b); refresh(); } catch (e) { status('error: ' + e.message); }
};
if (auth) start();
