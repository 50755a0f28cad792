// Drives the dashboard like an operator: sign in with an API key, wait for a client id in
// the client list, kick it, wait until it is gone, screenshot. Prints one JSON line per
// step; exits non-zero on a failure.
// usage: node drive.js <chromium> <url> <key> <secret> <client id> <screenshot.png>
'use strict';
const puppeteer = require('puppeteer-core');

const [chromium, url, key, secret, clientId, shot] = process.argv.slice(2);
const say = (step, extra) => console.log(JSON.stringify(Object.assign({ step }, extra || {})));

(async () => {
  const browser = await puppeteer.launch({
    executablePath: chromium,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1280, height: 900 });
    page.on('pageerror', (e) => say('pageerror', { error: String(e) }));
    await page.goto(url, { waitUntil: 'load' });
    // a wrong secret is refused
    await page.type('#key', key);
    await page.type('#secret', secret + 'x');
    await page.click('#login-button');
    await page.waitForFunction(() => document.getElementById('login-error').textContent !== '', { timeout: 10000 });
    say('refused', { error: await page.$eval('#login-error', (e) => e.textContent) });
    await page.$eval('#key', (e) => { e.value = ''; });
    await page.$eval('#secret', (e) => { e.value = ''; });
    await page.type('#key', key);
    await page.type('#secret', secret);
    await page.click('#login-button');
    await page.waitForSelector('#app:not([hidden])', { timeout: 10000 });
    // the overview's node table and counters fill in
    await page.waitForFunction(() => document.querySelectorAll('#nodes tbody tr').length >= 5, { timeout: 15000 });
    const conns = await page.$eval('#c-connections', (e) => e.textContent);
    say('signed-in', { connections: conns });
    await page.goto(url + '#clients');
    const row = `#client-table tr[data-clientid="${clientId}"]`;
    await page.waitForSelector(row, { timeout: 15000 });
    say('client-seen');
    await page.click(`[id="kick-${clientId}"]`);
    await page.waitForFunction((sel) => !document.querySelector(sel), { timeout: 15000 }, row);
    say('client-gone');
    await page.goto(url + '#overview');
    await new Promise((r) => setTimeout(r, 4500)); // two polls: the charts have points
    await page.screenshot({ path: shot, fullPage: true });
    say('screenshot', { path: shot });
  } finally {
    await browser.close();
  }
})().catch((e) => { say('error', { error: String(e && e.stack || e) }); process.exit(1); });
