#!/usr/bin/env node
// Browser test: Debian's chromium, driven by playwright-core, signs in to the
// dashboard served by tenderd, opens a device's view (its log follows with
// EventSource) and waits for the lines the test harness makes the device send.
//   node live_log.js BASE_URL TOKEN DEVICE_ID COUNT SCREENSHOT
// Prints "following" once the stream is open, then "browser ok N".
'use strict';
const path = require('path');
const { chromium } = require(path.join(__dirname, 'node_modules', 'playwright-core'));

const [base, token, device, count, shot] = process.argv.slice(2);

(async () => {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
           '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage();
    await page.goto(base + '/');
    await page.getByLabel('Admin token').fill(token);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Fleet', level: 2 }).waitFor({ timeout: 15000 });
    await page.goto(`${base}/#/devices/${device}`);
    await page.waitForFunction(() => document.querySelector('#log-state')?.textContent.includes('Live'),
                               null, { timeout: 15000 });
    console.log('following');
    const want = parseInt(count, 10);
    await page.waitForFunction((n) => [...document.querySelectorAll('#log li')]
      .filter((li) => li.textContent.includes('[Device] from the test ')).length >= n, want, { timeout: 30000 });
    const lines = await page.$$eval('#log li', (lis) => lis.map((li) => li.textContent));
    const ids = await page.$$eval('#log li', (lis) => lis.map((li) => li.dataset.id));
    if (new Set(ids).size !== ids.length) throw new Error('an event was shown twice');
    for (let i = 1; i <= want; i++)
      if (lines.filter((l) => l.endsWith(`[Device] from the test ${i}`)).length !== 1)
        throw new Error(`line ${i} is missing or repeated`);
    if (!lines.some((l) => l.includes('[Status] Device connected'))) throw new Error('no Device connected line');
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`browser ok ${want}`);
  } finally {
    await browser.close();
  }
})().catch((e) => { console.log('browser fail ' + e.message); process.exit(1); });
