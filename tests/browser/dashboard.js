#!/usr/bin/env node
// Browser tests of the dashboard: Debian's chromium, driven by playwright-core,
// against the real tenderd that tests/integration/test_09_browser.c starts.
//   node dashboard.js SCENARIO BASE_URL TOKEN SHOT_DIR [ARGS...]
// Scenarios (the C test sets up what each needs first):
//   signin VIEWER DEV   keyboard-only sign-in, a refused token, a 401 mid-session,
//                       a viewer token refused a restart with the reason
//   live DEV            DEV (group web, agent code deployed) comes online without a
//                       reload; its log, history paging, deploy, compile error,
//                       restart and migrate.  Prints "fleet ready" when the C test
//                       should start the device.
//   rollout S25 W25     upload firmware, create a rollout, read the plan's block
//                       reason, start it and watch it complete; abort a second
//                       one; flash-part verdicts and a CSV import with a
//                       line-numbered error
//   pause DEV1 DEV2     a rollout over three devices, one per stage: paused while
//                       DEV1 downloads, DEV2 not triggered while paused, resumed
//   paging              120 devices: three pages, search, group and state filters
//   phone DEV RO        390 px wide: no view (rollout RO's too) scrolls sideways, nor
//                       any box in it; controls labelled, tables captioned, sections named
//   laptop DEV RO       the same at 1280 px
//   screenshots DEV SPARE  the README's two screenshots (six devices; DEV is the
//                       boiler), and what the fleet's columns, the hardware filter,
//                       a device's details and its log colours show; SPARE (never
//                       seen, no group) is given a group
//   big DEV0 FAR        10,000 devices, 20 online: one page, counts, search finds FAR,
//                       paging, a bounded DOM; DEV0 comes online live (prints "fleet
//                       ready" first) and the view's stream carries status events only
//   states              no device: the fleet says how to register one; prints "stop
//                       the server", then the views say tenderd cannot be reached;
//                       prints "start the server", and the fleet view recovers
// Prints progress lines and, last, "ok SCENARIO" or "fail: why".
// Waits are playwright waits with generous timeouts, never sleeps.
'use strict';
const fs = require('fs');
const path = require('path');
const { chromium } = require(path.join(__dirname, 'node_modules', 'playwright-core'));

const [scenario, base, token, shots, ...args] = process.argv.slice(2);
const T = 30000; // generous: the machine is shared and may be slow

function check(cond, what) {
  if (!cond) throw new Error(what);
}

async function signIn(page) {
  await page.goto(base + '/');
  await page.getByLabel('Admin token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Fleet', level: 2 }).waitFor({ timeout: T });
}

// Every notice on screen is a live region of its kind: errors role=alert,
// the rest role=status (lib.js notice()).
async function checkNotices(page, what) {
  const bad = await page.$$eval('.notice', (els) => els
    .filter((el) => el.textContent.trim() && el.offsetParent !== null)
    .filter((el) => el.getAttribute('role') !== (el.classList.contains('error') ? 'alert' : 'status'))
    .map((el) => `"${el.textContent.slice(0, 50)}" (${el.className}) has role ${el.getAttribute('role')}`));
  check(!bad.length, `${what}: ${bad.join('; ')}`);
}

const logLines = (page) => page.$$eval('#log li', (lis) => lis.map((li) => ({ id: li.dataset.id, text: li.textContent })));

async function waitLog(page, text, count = 1) {
  await page.waitForFunction(([t, n]) => [...document.querySelectorAll('#log li')]
    .filter((li) => li.textContent.includes(t)).length >= n, [text, count], { timeout: T });
}

const countLog = async (page, text) => (await logLines(page)).filter((l) => l.text.includes(text)).length;

async function signin(page, viewer, dev) {
  await page.goto(base + '/');
  // Keyboard only: Tab to the token field (past the skip link), type, Enter.
  let focused = '';
  for (let i = 0; i < 10 && focused !== 'token'; i++) {
    await page.keyboard.press('Tab');
    focused = await page.evaluate(() => document.activeElement.id);
  }
  check(focused === 'token', 'Tab never reached the token field');
  const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  check(outline !== 'none', 'the focused field shows no focus outline');
  await page.keyboard.type('not-the-token');
  await page.keyboard.press('Enter');
  await page.getByRole('alert').filter({ hasText: 'That token was refused' }).waitFor({ timeout: T });
  check(await page.locator('#signin-msg').getAttribute('role') === 'alert', 'the refusal is not an alert');
  console.log('refused token shown');
  await page.keyboard.press('Control+A');
  await page.keyboard.type(token);
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: 'Fleet', level: 2 }).waitFor({ timeout: T });
  await page.locator('tr[data-id]').nth(1).waitFor({ timeout: T });
  await page.locator('.counts', { hasText: '2 devices' }).waitFor({ timeout: T });
  console.log('signed in with the keyboard');
  // The keyboard reaches a device and opens it.
  for (let i = 0; i < 30; i++) {
    await page.keyboard.press('Tab');
    if (await page.evaluate(() => document.activeElement.matches('tr[data-id] a'))) break;
  }
  const id = await page.evaluate(() => document.activeElement.closest('tr').dataset.id);
  await page.keyboard.press('Enter');
  await page.waitForFunction((d) => location.hash === `#/devices/${d}` &&
    document.activeElement.id === 'device-title', id, { timeout: T });
  console.log('opened a device with the keyboard');
  // A token that stops working sends the user back to sign in, saying why.
  await page.evaluate(() => sessionStorage.setItem('tender.token', 'revoked'));
  await page.evaluate(() => { location.hash = '#/flash-parts'; });
  await page.locator('#signin-msg', { hasText: '401' }).waitFor({ timeout: T });
  check(await page.locator('#token').isVisible(), 'no sign-in form after a 401');
  await page.screenshot({ path: path.join(shots, 'signin-401.png') });
  console.log('401 sends back to sign in');
  // A viewer token looks but cannot change: the 403 says why, in place.
  await page.getByLabel('Admin token').fill(viewer);
  await page.getByRole('button', { name: 'Sign in' }).click();
  // Signing in again returns to the page that was open.
  await page.getByRole('heading', { name: 'Flash parts', level: 2 }).waitFor({ timeout: T });
  await page.evaluate((d) => { location.hash = `#/devices/${d}`; }, dev);
  await page.locator('#agent-state').waitFor({ timeout: T });
  await page.getByRole('button', { name: 'Restart agent' }).click();
  await page.getByRole('alert').filter({ hasText: 'Cannot restart' }).filter({ hasText: 'operator' }).waitFor({ timeout: T });
  await checkNotices(page, 'a refused restart');
  console.log('a viewer is told why it cannot restart');
}

async function live(page, dev) {
  await signIn(page);
  const row = page.locator(`tr[data-id="${dev}"]`);
  await row.waitFor({ timeout: T });
  check(await row.getAttribute('data-online') === 'false', 'the device is online before it connected');
  await page.locator('.live', { hasText: 'Live' }).waitFor({ timeout: T });
  await page.evaluate(() => { window.notReloaded = true; });
  console.log('fleet ready');
  // The C test starts the device now: its row turns online with no reload.
  await page.locator(`tr[data-id="${dev}"][data-online="true"]`).waitFor({ timeout: T });
  check(await page.evaluate(() => window.notReloaded === true), 'the page was reloaded');
  await row.getByText('online', { exact: true }).waitFor({ timeout: T });
  await page.locator('#count-online', { hasText: '3' }).waitFor({ timeout: T });
  await row.getByText('imp003').waitFor({ timeout: T });
  console.log('came online live');
  await page.locator('body').screenshot({ path: path.join(shots, 'fleet.png') });

  await row.getByRole('link').click();
  await page.getByRole('heading', { name: new RegExp(dev) }).waitFor({ timeout: T });
  await waitLog(page, '[Device] from the test 250');
  console.log('live log shown');
  // History: the newest 100 lines first; scrolling to the top of the log
  // brings the 100 before them (no click), then the button the rest.  (A
  // reload: the view opened while the lines were still coming in live.)
  await page.reload();
  await waitLog(page, '[Device] from the test 250');
  await page.locator('#log-state', { hasText: 'Live.' }).waitFor({ timeout: T });
  const first = (await logLines(page)).length;
  check(first === 100, `the log opened with ${first} lines, not the newest 100`);
  await page.locator('#log').evaluate((el) => { el.scrollTop = 0; });
  await page.waitForFunction(() => document.querySelectorAll('#log li').length === 200, null, { timeout: T });
  check(await page.locator('#log').evaluate((el) => el.scrollTop > 0), 'the lines read before the older ones came moved away');
  console.log('scrolling to the top loaded older lines');
  for (let i = 0; i < 5; i++) {
    const lines = await logLines(page);
    if (lines.some((l) => l.text.endsWith('[Device] from the test 1'))) break;
    await page.getByRole('button', { name: 'Load older lines' }).click();
    await page.waitForFunction((n) => document.querySelectorAll('#log li').length > n, lines.length, { timeout: T });
  }
  await waitLog(page, '[Status] Device connected');
  const lines = await logLines(page);
  check(new Set(lines.map((l) => l.id)).size === lines.length, 'a log line is shown twice');
  for (let i = 1; i <= 250; i++)
    check(lines.filter((l) => l.text.endsWith(`[Device] from the test ${i}`)).length === 1, `log line ${i} missing or repeated`);
  const ids = lines.map((l) => Number(l.id));
  check(ids.every((v, i) => i === 0 || v > ids[i - 1]), 'the log is out of order');
  console.log('history paged back');

  await page.locator('#agent-state', { hasText: 'running' }).waitFor({ timeout: T });
  await page.getByLabel('Agent code (Lua) for group web').fill(
    'server.log("agent v2 ready")\ndevice.on("reading", function (data)\n  server.log("reading " .. tostring(data))\nend)\n');
  await page.getByRole('button', { name: 'Deploy to group web' }).click();
  await page.getByRole('status').filter({ hasText: 'Deployed' }).filter({ hasText: 'to group web.' }).waitFor({ timeout: T });
  await checkNotices(page, 'a deploy');
  await waitLog(page, '[Status] Agent restarted: reload.');
  await waitLog(page, '[Agent] agent v2 ready');
  await page.locator('#code-result', { hasText: 'Deployed' }).waitFor({ timeout: T });
  console.log('deployed');
  // A fresh view starts from the code the group runs.
  await page.reload();
  await page.waitForFunction(() => { const c = document.querySelector('#code');
    return c && c.value.includes('agent v2 ready'); }, null, { timeout: T });
  console.log('the code box starts with the deployed code');

  await page.getByLabel('Agent code (Lua) for group web').fill('local x = 1\nx = = 2\n');
  await page.getByRole('button', { name: 'Deploy to group web' }).click();
  const err = page.getByRole('alert').filter({ hasText: 'line 2' });
  await err.waitFor({ timeout: T });
  check((await err.textContent()).includes('x = = 2'), 'the compile error does not show the line');
  check(await page.locator('#code').getAttribute('aria-invalid') === 'true', 'the editor is not marked invalid');
  await checkNotices(page, 'a compile error');
  await page.getByRole('button', { name: 'Go to line 2' }).click();
  check(await page.evaluate(() => { const c = document.querySelector('#code'); return document.activeElement === c &&
    c.value.slice(c.selectionStart, c.selectionEnd) === 'x = = 2'; }), 'Go to line does not select the line');
  console.log('compile error shown at its line');

  const started = await countLog(page, '[Status] Agent started.');
  await page.getByRole('button', { name: 'Restart agent' }).click();
  await page.getByRole('status').filter({ hasText: 'Restart requested' }).waitFor({ timeout: T });
  await waitLog(page, '[Status] Agent started.', started + 1);
  const worker = await page.locator('dt:text-is("Worker") + dd').textContent();
  await page.getByRole('button', { name: 'Migrate agent' }).click();
  await page.waitForFunction((w) => {
    const dt = [...document.querySelectorAll('dt')].find((d) => d.textContent === 'Worker');
    return dt && dt.nextElementSibling.textContent !== w;
  }, worker, { timeout: T });
  await page.locator('#agent-state', { hasText: 'running' }).waitFor({ timeout: T });
  console.log('restarted and migrated');
  await page.locator('#log').evaluate((el) => { el.scrollTop = el.scrollHeight; });
  await page.screenshot({ path: path.join(shots, 'device.png'), fullPage: true });
}

async function rollout(page, s25, w25) {
  await signIn(page);
  await page.getByRole('link', { name: 'Firmware & rollouts' }).click();
  await page.getByRole('heading', { name: 'Firmware & rollouts' }).waitFor({ timeout: T });
  await page.getByLabel('Image file').setInputFiles({ name: 'fw-36.11.bin', mimeType: 'application/octet-stream',
                                                      buffer: Buffer.alloc(70000, 0x5a) });
  await page.getByLabel('Version').fill('36.11');
  await page.getByLabel('Hardware models (comma-separated)').fill('imp003');
  await page.getByLabel('Needs 4 KB erase across the whole chip').check();
  await page.getByLabel('Needs 64 KB erase across the whole chip').check();
  await page.getByLabel('Minimum flash size (bytes)').fill('524288');
  await page.getByRole('button', { name: 'Upload firmware' }).click();
  await page.getByRole('status').filter({ hasText: 'Uploaded firmware 36.11' }).waitFor({ timeout: T });
  await checkNotices(page, 'an upload');
  await page.getByRole('cell', { name: 'uniform 4 KiB + 64 KiB erase, at least 512 KiB' }).waitFor({ timeout: T });
  console.log('uploaded');

  await page.getByRole('combobox', { name: 'Firmware', exact: true }).selectOption({ label: '36.11 (imp003)' });
  await page.getByLabel('Devices, group or hardware').fill(`${s25} ${w25}`);
  await page.getByRole('button', { name: 'Create rollout (paused)' }).click();
  await page.waitForFunction(() => /^#\/rollouts\/\d+$/.test(location.hash), null, { timeout: T });
  await page.locator('#rollout-state', { hasText: 'paused' }).waitFor({ timeout: T });
  const blocked = page.locator(`tr[data-device="${s25}"]`);
  await blocked.waitFor({ timeout: T });
  check(await blocked.getAttribute('data-decision') === 'blocked', 'the S25FL127S device is not blocked');
  const why = 'flash S25FL127S (JEDEC 01 20 18) has 4 KB erase in only 16 of 4096 4 KB blocks; ' +
              'firmware 36.11 needs 4 KB and 64 KB erase across the whole chip, at least 512 KB';
  check((await blocked.textContent()).includes(why), `no block reason in the plan: ${await blocked.textContent()}`);
  check(await page.locator(`tr[data-device="${w25}"]`).getAttribute('data-decision') === 'eligible',
        'the W25Q128FV device is not eligible');
  await page.getByText('1 eligible, 1 blocked, 0 up to date').waitFor({ timeout: T });
  console.log('plan shows the block reason');
  await page.screenshot({ path: path.join(shots, 'rollout-plan.png'), fullPage: true });

  await page.getByRole('button', { name: 'Start rollout' }).click();
  await page.locator('#rollout-state', { hasText: 'completed' }).waitFor({ timeout: 90000 });
  await page.locator('li[data-state="completed"]', { hasText: '1 completed' }).waitFor({ timeout: T });
  await page.locator('li[data-state="blocked"]', { hasText: '1 blocked' }).waitFor({ timeout: T });
  check(!(await page.getByRole('button', { name: 'Abort' }).count()), 'a completed rollout offers Abort');
  console.log('rollout completed');
  await page.screenshot({ path: path.join(shots, 'rollout-done.png'), fullPage: true });

  // A second rollout, by hardware model: nothing left to do, and aborted
  // from its page after the confirmation.
  await page.getByRole('link', { name: '← Firmware & rollouts' }).click();
  await page.getByRole('link', { name: 'Rollout 1' }).waitFor({ timeout: T });
  await page.getByRole('combobox', { name: 'Firmware', exact: true }).selectOption({ label: '36.11 (imp003)' });
  await page.getByRole('combobox', { name: 'Target' }).selectOption('hw');
  await page.getByLabel('Devices, group or hardware').fill('imp003');
  await page.getByRole('button', { name: 'Create rollout (paused)' }).click();
  await page.getByRole('heading', { name: 'Rollout 2' }).waitFor({ timeout: T });
  await page.getByText('0 eligible, 1 blocked, 1 up to date').waitFor({ timeout: T });
  page.once('dialog', (d) => d.accept());
  await page.getByRole('button', { name: 'Abort' }).click();
  await page.locator('#rollout-state', { hasText: 'aborted' }).waitFor({ timeout: T });
  await page.getByText('This rollout has been aborted.').waitFor({ timeout: T });
  console.log('second rollout aborted');

  await page.getByRole('link', { name: 'Flash parts' }).click();
  await page.getByLabel('Verdict for firmware').selectOption({ label: '36.11 (imp003)' });
  const s25row = page.locator('tr', { hasText: 'S25FL127S' }).first();
  await s25row.getByText('blocked', { exact: true }).waitFor({ timeout: T });
  await page.locator('tr', { hasText: 'W25Q128FV' }).first().getByText('compatible', { exact: true }).waitFor({ timeout: T });
  console.log('flash verdicts shown');
  const header = 'vendor,part,jedec_mfr,jedec_dev,size_bytes,uniform_4k_erase,uniform_64k_erase\n';
  await page.getByLabel('or CSV text').fill(header + 'Acme,AC25Q16,0xAC,0x4015,2M,maybe,yes\n');
  await page.getByRole('button', { name: 'Import' }).click();
  await page.getByRole('alert').filter({ hasText: 'Line 2, column uniform_4k_erase' }).waitFor({ timeout: T });
  await checkNotices(page, 'a refused import');
  await page.getByLabel('or CSV text').fill(header + 'Acme,AC25Q16,0xAC,0x4015,2M,no,yes\n');
  await page.getByRole('button', { name: 'Import' }).click();
  await page.getByRole('status').filter({ hasText: 'Imported 1 part.' }).waitFor({ timeout: T });
  await checkNotices(page, 'an import');
  await page.locator('tr', { hasText: 'AC25Q16' }).first().waitFor({ timeout: T });
  // A CSV file, chosen with the file input.
  await page.getByLabel('CSV file').setInputFiles({ name: 'acme.csv', mimeType: 'text/csv',
    buffer: Buffer.from(header + 'Acme,AC25Q32,0xAC,0x4016,4M,yes,yes\n') });
  await page.waitForFunction(() => document.querySelector('#fp-csv').value.includes('AC25Q32'), null, { timeout: T });
  await page.getByRole('button', { name: 'Import' }).click();
  await page.locator('tr', { hasText: 'AC25Q32' }).first().waitFor({ timeout: T });
  console.log('csv import errors and success shown');
}

// The README's screenshots: the fleet (six devices, four online) and the
// seed report's imp003 with its agent's and its own lines, and a compile
// error at its line.  tools/screenshots.sh copies them to docs/img/.
// A row's cells by column, and a details list's values by term.
const rowCells = (page, text) => page.locator('tr[data-id]', { hasText: text }).first().evaluate((tr) =>
  Object.fromEntries([...tr.children].map((td) => [td.dataset.label, td.textContent])));
const detailsOf = (page, label) => page.locator(`dl[aria-label="${label}"]`).evaluate((dl) =>
  Object.fromEntries([...dl.querySelectorAll('dt')].map((dt) => [dt.textContent, dt.nextElementSibling.textContent])));

function expect(got, want, what) {
  for (const [k, v] of Object.entries(want)) {
    const ok = v instanceof RegExp ? v.test(got[k]) : got[k] === v;
    check(ok, `${what}: ${k} is "${got[k]}", not ${v}`);
  }
}

async function screenshots(page, dev, spare) {
  await signIn(page);
  await page.locator('.counts', { hasText: '6 devices' }).waitFor({ timeout: T });
  await page.locator('#count-online', { hasText: '4' }).waitFor({ timeout: T });
  await page.locator('.live', { hasText: 'Live' }).waitFor({ timeout: T });
  await page.waitForFunction(() => document.querySelectorAll('tr[data-online="true"]').length === 4,
    null, { timeout: T });
  await page.locator(`tr[data-id="${dev}"] td[data-label="Agent"]`, { hasText: 'running' }).waitFor({ timeout: T });
  await page.locator('body').screenshot({ path: path.join(shots, 'readme-fleet.png') });
  console.log('fleet shot');

  // Each column shows what the device said and what the table knows of it.
  expect(await rowCells(page, 'boiler room'), { State: 'online', HW: 'imp003', FW: '36.10',
    Flash: '012018 S25FL127S / S25FL128S (256KB) / S25FL128S (64KB) (shared id)', Agent: 'running',
    'Last seen': 'now', Group: 'imps' }, 'the boiler row');
  expect(await rowCells(page, 'roof weather station'), { HW: 'imp004m', FW: '37.2',
    Flash: 'c22018 MX25L12835F (known)', Agent: 'no code', Group: 'weather' }, 'the roof row');
  expect(await rowCells(page, 'test bench'), { FW: '37.3-rc1', Flash: 'bf2641 not in the table (unknown)' },
    'the bench row');
  expect(await rowCells(page, 'cold store 2'), { State: 'offline', FW: '36.10', 'Last seen': /^\d+ (s|min) ago$/ },
    'the cold store row');
  expect(await rowCells(page, spare), { State: 'offline', HW: '-', FW: '-', Flash: '-', 'Last seen': '-', Group: '-' },
    'the never-seen row');
  // The hardware filter, with the models the fleet has as suggestions.
  const models = await page.$$eval('#hw-list option', (os) => os.map((o) => o.value).sort().join(', '));
  check(models === 'imp003, imp004m', `hardware suggestions: ${models}`);
  await page.getByLabel('Hardware').fill('imp004m');
  await page.getByRole('button', { name: 'Apply' }).click();
  await page.waitForFunction(() => { const hw = [...document.querySelectorAll('tr[data-id] td[data-label="HW"]')];
    return hw.length === 2 && hw.every((td) => td.textContent === 'imp004m'); }, null, { timeout: T });
  await page.getByLabel('Hardware').fill('');
  await page.getByRole('button', { name: 'Apply' }).click();
  await page.waitForFunction(() => document.querySelectorAll('tr[data-id]').length === 6, null, { timeout: T });
  console.log('fleet columns and the hardware filter');

  await page.locator(`tr[data-id="${dev}"]`).getByRole('link').click();
  await page.getByRole('heading', { name: `boiler room (${dev})` }).waitFor({ timeout: T });
  await waitLog(page, '[Device] flow temperature 66.5 C');
  await waitLog(page, '[Agent] reading 6 stored');
  await page.locator('#agent-state', { hasText: 'running' }).waitFor({ timeout: T });
  await page.waitForFunction(() => document.querySelector('#code')?.value.includes('boiler.lua'), null, { timeout: T });
  expect(await detailsOf(page, 'Device details'), { State: 'online', Name: 'boiler room', Group: 'imps',
    Hardware: 'imp003', Firmware: '36.10', Flash: '012018 S25FL127S / S25FL128S (256KB) / S25FL128S (64KB) (shared id)',
    'Flash size': '16 MiB', 'Uniform erase': '4 KB: no, 64 KB: no', 'Last seen': 'now' }, 'the boiler\'s details');
  // Each line has its type's class, and each type its own colour.
  const wrong = await page.$$eval('#log li', (lis) => lis.filter((li) => {
    const m = li.textContent.match(/ \[(\w+)\] /);
    return !m || !li.classList.contains(`t-${m[1].toLowerCase()}`);
  }).map((li) => `${li.className}: ${li.textContent}`));
  check(!wrong.length, `log lines without their type's class: ${wrong.join('; ')}`);
  const colours = await page.$eval('#log', (log) => {
    const fw = document.createElement('li'); // nothing writes [Firmware] lines yet
    fw.className = 't-firmware';
    log.append(fw);
    const c = (sel) => { const li = log.querySelector(sel); return li && getComputedStyle(li).color; };
    const got = { plain: getComputedStyle(log).color, status: c('li.t-status'), device: c('li.t-device'),
                  agent: c('li.t-agent'), firmware: c('li.t-firmware') };
    fw.remove();
    return got;
  });
  check(Object.values(colours).every(Boolean) && new Set(Object.values(colours)).size === 5,
        `the log's types are not each in their own colour: ${JSON.stringify(colours)}`);
  console.log('details and log colours');
  const code = await page.locator('#code').inputValue();
  await page.locator('#code').fill(code.replace('  last = data.seq\n', '  if data.seq > 3 last = data.seq end\n'));
  await page.getByRole('button', { name: 'Deploy to group imps' }).click();
  await page.getByRole('alert').filter({ hasText: 'line 5' }).waitFor({ timeout: T });
  await page.locator('#log').evaluate((el) => { el.scrollTop = el.scrollHeight; });
  await page.locator('#code').blur();
  await page.screenshot({ path: path.join(shots, 'readme-device.png'), fullPage: true });
  console.log('device shot');

  // A device with no group is offered one; then the group's code box.
  await page.evaluate((d) => { location.hash = `#/devices/${d}`; }, spare);
  await page.getByText('Agent code belongs to a group, and this device has none: set one first.').waitFor({ timeout: T });
  expect(await detailsOf(page, 'Device details'), { State: 'offline', Group: '-', Hardware: '-', 'Last seen': 'never' },
    'the never-seen device\'s details');
  await page.getByLabel('Group').fill('imps');
  await page.getByRole('button', { name: 'Set group' }).click();
  await page.getByLabel('Agent code (Lua) for group imps').waitFor({ timeout: T });
  await page.waitForFunction(() => document.querySelector('#code')?.value.includes('boiler.lua'), null, { timeout: T });
  expect(await detailsOf(page, 'Device details'), { Group: 'imps' }, 'the device given a group');
  console.log('a group set');
}

// A rollout over three devices, one per stage, each taking its update slowly:
// started, paused while the first downloads (the view says paused and offers
// Resume), no new trigger while paused however long the view keeps polling,
// then resumed to the end.
const stateCount = (page, st) => page.$eval('.states', (ul, s) => {
  const li = ul.querySelector(`li[data-state="${s}"]`);
  return li ? Number(li.querySelector('strong').textContent) : 0;
}, st).catch(() => 0);

async function pause(page, first, second) {
  await signIn(page);
  await page.getByRole('link', { name: 'Firmware & rollouts' }).click();
  await page.getByRole('combobox', { name: 'Firmware', exact: true }).selectOption({ label: '36.11 (imp003)' });
  await page.getByRole('combobox', { name: 'Target' }).selectOption('group');
  await page.getByLabel('Devices, group or hardware').fill('dock');
  await page.getByLabel('Stages (cumulative %)').fill('33, 66, 100');
  await page.getByRole('button', { name: 'Create rollout (paused)' }).click();
  await page.getByText('3 eligible, 0 blocked, 0 up to date').waitFor({ timeout: T });
  await page.getByRole('button', { name: 'Start rollout' }).click();
  await page.locator('#rollout-state', { hasText: 'running' }).waitFor({ timeout: T });
  // The first stage's device is under way: pause now.
  await page.locator(`tr[data-device="${first}"]`).filter({ hasText: /triggered|downloading/ }).waitFor({ timeout: T });
  await page.getByRole('button', { name: 'Pause' }).click();
  await page.locator('#rollout-state', { hasText: 'paused' }).waitFor({ timeout: T });
  await page.getByRole('button', { name: 'Resume' }).waitFor({ timeout: T });
  check(!(await page.getByRole('button', { name: 'Pause' }).count()), 'a paused rollout still offers Pause');
  check(await page.getByRole('button', { name: 'Abort' }).count() === 1, 'a paused rollout offers no Abort');
  console.log('paused mid-download');
  // What was under way finishes; nothing new starts, poll after poll.
  await page.locator('li[data-state="completed"]', { hasText: '1 completed' }).waitFor({ timeout: 90000 });
  for (let i = 0; i < 3; i++)
    await page.waitForResponse((res) => /\/v1\/rollouts\/\d+\/plan$/.test(res.url()), { timeout: T });
  check(await stateCount(page, 'pending') === 2, `not 2 pending while paused: ${await page.locator('.states').textContent()}`);
  check((await page.locator(`tr[data-device="${second}"]`).textContent()).includes('pending'),
        'the second stage started while paused');
  check(await page.locator('#rollout-state').textContent() === 'paused', 'no longer paused');
  await page.screenshot({ path: path.join(shots, 'rollout-paused.png'), fullPage: true });
  console.log('no trigger while paused');
  await page.getByRole('button', { name: 'Resume' }).click();
  await page.locator('#rollout-state', { hasText: 'running' }).waitFor({ timeout: T });
  await page.locator('#rollout-state', { hasText: 'completed' }).waitFor({ timeout: 150000 });
  await page.locator('li[data-state="completed"]', { hasText: '3 completed' }).waitFor({ timeout: T });
  console.log('resumed to the end');
}

// No devices, then no server: neither looks like the other.
async function states(page) {
  await signIn(page);
  await page.getByText('No devices yet: register one with tenderctl register or POST /v1/devices.').waitFor({ timeout: T });
  await page.locator('.counts', { hasText: '0 devices' }).waitFor({ timeout: T });
  await page.locator('.live', { hasText: 'Live' }).waitFor({ timeout: T });
  check(await page.getByRole('button', { name: 'Next page' }).isDisabled(), 'an empty fleet has a next page');
  await page.screenshot({ path: path.join(shots, 'fleet-empty.png'), fullPage: true });
  console.log('stop the server');
  await page.locator('.live', { hasText: /Reconnecting|Not live/ }).waitFor({ timeout: 60000 });
  await page.evaluate(() => { location.hash = '#/flash-parts'; });
  await page.getByRole('alert').filter({ hasText: 'Cannot read the flash-parts table: cannot reach tenderd' }).waitFor({ timeout: T });
  await page.evaluate(() => { location.hash = '#/'; });
  await page.getByRole('alert').filter({ hasText: 'Cannot list devices: cannot reach tenderd' }).waitFor({ timeout: T });
  await page.locator('.counts', { hasText: 'Cannot count devices: cannot reach tenderd' }).waitFor({ timeout: T });
  await page.locator('.live', { hasText: 'Not live: cannot reach tenderd' }).waitFor({ timeout: T });
  check(!(await page.getByText('No devices yet').count()), 'an unreachable server looks like an empty fleet');
  await checkNotices(page, 'an unreachable server');
  check(await page.getByRole('button', { name: 'Next page' }).isDisabled(), 'Next page is offered with no list');
  await page.screenshot({ path: path.join(shots, 'fleet-unreachable.png'), fullPage: true });
  console.log('unreachable server shown');
  // Back again: the view recovers by itself.
  await page.evaluate(() => { window.notReloaded = true; });
  console.log('start the server');
  await page.locator('.live.on', { hasText: /^Live$/ }).waitFor({ timeout: 60000 });
  await page.getByText('No devices yet: register one with tenderctl register or POST /v1/devices.').waitFor({ timeout: T });
  await page.locator('.counts', { hasText: '0 devices' }).waitFor({ timeout: T });
  check(await page.evaluate(() => window.notReloaded === true), 'the page was reloaded');
  console.log('recovered');
}

// 10,000 devices, 20 online and chatty.  The view renders one page, counts
// all, finds one by search and pages; the page's DOM stays one page big.
// DEV0 comes online while the view watches: its row turns online live, and
// the view's log stream (status events only) never carries a device line.
async function big(page, dev0, far) {
  const streams = []; // what each EventSource on the page received, by type
  await page.exposeFunction('__sse', (url, type) => {
    let s = streams.find((x) => x.url === url);
    if (!s) streams.push(s = { url, types: {} });
    s.types[type] = (s.types[type] || 0) + 1;
  });
  await page.addInitScript(() => {
    const Native = window.EventSource;
    window.EventSource = class extends Native {
      constructor(url, init) {
        super(url, init);
        const path = new URL(url, location.href).pathname;
        this.addEventListener('message', (e) => window.__sse(path, JSON.parse(e.data).type));
      }
    };
  });
  const created = [];
  page.on('request', (req) => {
    if (req.method() === 'POST' && new URL(req.url()).pathname === '/v1/logstreams') created.push(req.postDataJSON());
  });
  await signIn(page);
  await page.waitForFunction(() => document.querySelector('#count-devices')?.textContent.replace(/\D/g, '') === '10000',
    null, { timeout: T });
  await page.locator('#count-online', { hasText: /^20$/ }).waitFor({ timeout: T });
  await page.waitForFunction(() => document.querySelectorAll('tr[data-id]').length === 50 &&
    !document.querySelector('.list[aria-busy]'), null, { timeout: T });
  const row0 = page.locator(`tr[data-id="${dev0}"]`);
  check(await row0.getAttribute('data-online') === 'false', 'the late device is online before it connected');
  await page.locator('.live.on', { hasText: /^Live$/ }).waitFor({ timeout: T });
  check(created.length === 1 && created[0].all === true && JSON.stringify(created[0].types) === '["status"]',
        `the fleet's log stream was not asked for status events only: ${JSON.stringify(created)}`);
  console.log('fleet ready');
  await page.locator(`tr[data-id="${dev0}"][data-online="true"]`).waitFor({ timeout: T });
  await page.locator('#count-online', { hasText: /^21$/ }).waitFor({ timeout: T });
  // By now the 21 devices have sent lines (DEV0 five a second): wait until
  // DEV0's log has ten, so an unfiltered stream would have carried some.
  await page.waitForFunction(async ([d, t]) => {
    const r = await fetch(`/v1/devices/${d}/logs?type=device&limit=10`, { headers: { Authorization: `Bearer ${t}` } });
    return r.ok && (await r.json()).events.length >= 10;
  }, [dev0, token], { timeout: T, polling: 500 });
  const fleetStream = streams.find((s) => s.url.startsWith('/v1/logstreams/'));
  check(fleetStream && fleetStream.types.status >= 1, `the fleet's stream brought no status event: ${JSON.stringify(streams)}`);
  check(Object.keys(fleetStream.types).join() === 'status', `the fleet's stream brought ${JSON.stringify(fleetStream.types)}`);
  console.log('came online live; the stream carried status events only');

  // One page of rows, however big the fleet.
  const dom = await page.evaluate(() => ({ rows: document.querySelectorAll('tr').length,
                                           nodes: document.querySelectorAll('#main *').length }));
  check(dom.rows <= 51 && dom.nodes < 2000, `the page holds ${dom.rows} rows, ${dom.nodes} elements`);
  const page1 = await page.$$eval('tr[data-id]', (trs) => trs.map((tr) => tr.dataset.id));
  await page.getByRole('button', { name: 'Next page' }).click();
  await page.locator('.page-info', { hasText: 'Page 2' }).waitFor({ timeout: T });
  await page.waitForFunction((first) => document.querySelectorAll('tr[data-id]').length === 50 &&
    !document.querySelector(`tr[data-id="${first}"]`), page1[0], { timeout: T });
  const page2 = await page.$$eval('tr[data-id]', (trs) => trs.map((tr) => tr.dataset.id));
  check(page2.every((id) => !page1.includes(id)) && page2[0] > page1[49], 'page 2 repeats page 1');
  await page.getByRole('button', { name: 'Previous page' }).click();
  await page.locator('.page-info', { hasText: 'Page 1' }).waitFor({ timeout: T });
  await page.waitForFunction((first) => !!document.querySelector(`tr[data-id="${first}"]`), page1[0], { timeout: T });
  console.log('paged');
  await page.getByLabel('Search').fill(far);
  await page.waitForFunction((id) => { const trs = document.querySelectorAll('tr[data-id]');
    return trs.length === 1 && trs[0].dataset.id === id; }, far, { timeout: T });
  check(await page.getByRole('button', { name: 'Next page' }).isDisabled(), 'one match has a next page');
  console.log('found one device by search');
  await page.getByLabel('Search').fill('');
  await page.getByLabel('State').selectOption('true');
  await page.waitForFunction(() => { const trs = [...document.querySelectorAll('tr[data-id]')];
    return trs.length === 21 && trs.every((tr) => tr.dataset.online === 'true'); }, null, { timeout: T });
  await page.locator('body').screenshot({ path: path.join(shots, 'fleet-10000-online.png') });
  console.log('filtered the online ones');
}

const rowNames = (page) => page.$$eval('tr[data-id] a', (as) => as.map((a) => a.firstChild.textContent));

async function paging(page) {
  await signIn(page);
  await page.locator('.counts', { hasText: '120 devices' }).waitFor({ timeout: T });
  const seen = new Set();
  for (const [n, more] of [[50, true], [50, true], [20, false]]) {
    await page.locator('.page-info', { hasText: `Page ${seen.size / 50 + 1}` }).waitFor({ timeout: T });
    await page.waitForFunction((k) => document.querySelectorAll('tr[data-id]').length === k &&
      !document.querySelector('.list[aria-busy]'), n, { timeout: T });
    for (const name of await rowNames(page)) seen.add(name);
    const next = page.getByRole('button', { name: 'Next page' });
    check(await next.isEnabled() === more, `Next page is ${more ? 'disabled' : 'enabled'} on a page of ${n}`);
    if (more) await next.click();
  }
  check(seen.size === 120, `the pages showed ${seen.size} different devices, not 120`);
  await page.getByRole('button', { name: 'Previous page' }).click();
  await page.locator('.page-info', { hasText: 'Page 2' }).waitFor({ timeout: T });
  console.log('paged through 120 devices');
  // The search is the server's: it finds devices on every page.
  await page.getByLabel('Search').fill('SENSOR 11');
  await page.locator('.page-info', { hasText: 'Page 1' }).waitFor({ timeout: T });
  await page.waitForFunction(() => document.querySelectorAll('tr[data-id]').length === 11, null, { timeout: T });
  const found = await rowNames(page);
  check(found.every((n) => n.startsWith('sensor 11')), `search found ${found.join(', ')}`);
  console.log('searched');
  await page.getByLabel('Search').fill('');
  await page.getByLabel('Group').fill('even');
  await page.getByRole('button', { name: 'Apply' }).click();
  await page.waitForFunction(() => document.querySelectorAll('tr[data-id]').length === 50 &&
    [...document.querySelectorAll('tr[data-id] td:last-child')].every((td) => td.textContent === 'even'), null, { timeout: T });
  await page.getByLabel('State').selectOption('true');
  await page.getByText('No device matches these filters.').waitFor({ timeout: T });
  console.log('filtered');
}

// Neither the page nor any box in it (a table's scroll container, say)
// scrolls sideways; every visible control has a label or a name a screen
// reader reads; every table has a caption and column headers; every
// section is named by its heading.
async function noSideScroll(page, what) {
  const [sw, w] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  check(sw <= w, `${what} scrolls sideways at ${w} px: ${sw} px wide`);
  const wide = await page.$$eval('#main *', (els) => els
    .filter((el) => el.offsetParent !== null && el.scrollWidth > el.clientWidth + 1 &&
      ['auto', 'scroll'].includes(getComputedStyle(el).overflowX) && !el.matches('.code-line'))
    .map((el) => `${el.tagName.toLowerCase()}.${el.className} (${el.scrollWidth} > ${el.clientWidth})`));
  check(!wide.length, `${what} at ${w} px has boxes that scroll sideways: ${wide.join(', ')}`);
  const unlabelled = await page.$$eval('input, select, textarea, button', (els) => els
    .filter((el) => el.offsetParent !== null && !(el.labels && el.labels.length) &&
      !el.getAttribute('aria-label') && !(el.tagName === 'BUTTON' && el.textContent.trim()))
    .map((el) => el.outerHTML.slice(0, 80)));
  check(!unlabelled.length, `${what} has controls without a label: ${unlabelled.join(' ')}`);
  const tables = await page.$$eval('#main table', (ts) => ts
    .filter((t) => !t.caption || !t.caption.textContent.trim() || !t.querySelectorAll('thead th[scope="col"]').length)
    .map((t) => t.outerHTML.slice(0, 60)));
  check(!tables.length, `${what} has tables without a caption or column headers: ${tables.join(' ')}`);
  const sections = await page.$$eval('#main section', (ss) => ss
    .filter((s) => { const id = s.getAttribute('aria-labelledby'); const hd = id && document.getElementById(id);
      return !hd || !/^H[1-6]$/.test(hd.tagName) || !hd.textContent.trim(); })
    .map((s) => s.outerHTML.slice(0, 60)));
  check(!sections.length, `${what} has sections not named by a heading: ${sections.join(' ')}`);
  await page.screenshot({ path: path.join(shots, `${scenario}-${what}.png`), fullPage: true });
}

async function phone(page, dev, ro) {
  await signIn(page);
  await page.locator(`tr[data-id="${dev}"][data-online="true"]`).waitFor({ timeout: T });
  await noSideScroll(page, 'fleet');
  await page.locator(`tr[data-id="${dev}"]`).getByRole('link').click();
  await waitLog(page, '[Status] Device connected');
  await page.locator('#agent-state').waitFor({ timeout: T });
  await noSideScroll(page, 'device');
  await page.getByRole('link', { name: 'Flash parts' }).click();
  await page.getByRole('cell', { name: 'W25Q128FV' }).first().waitFor({ timeout: T });
  await noSideScroll(page, 'flash-parts');
  await page.getByRole('link', { name: 'Firmware & rollouts' }).click();
  await page.getByRole('link', { name: `Rollout ${ro}` }).waitFor({ timeout: T });
  await page.getByRole('cell', { name: 'uniform 4 KiB + 64 KiB erase, at least 512 KiB' }).waitFor({ timeout: T });
  await noSideScroll(page, 'rollouts');
  // The rollout, its plan with the S25FL127S's long block reason.
  await page.getByRole('link', { name: `Rollout ${ro}` }).click();
  await page.getByRole('heading', { name: `Rollout ${ro}`, level: 2 }).waitFor({ timeout: T });
  await page.locator(`tr[data-device="${dev}"]`, { hasText: 'has 4 KB erase in only 16 of 4096' }).waitFor({ timeout: T });
  await page.getByRole('button', { name: 'Start rollout' }).waitFor({ timeout: T });
  await noSideScroll(page, 'rollout');
  console.log('no view scrolls sideways');
}

(async () => {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
           '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync'],
  });
  let page;
  fs.rmSync(path.join(shots, `${scenario}-failed.png`), { force: true });
  try {
    const phoneSize = scenario === 'phone'; // 390 px; the others a laptop's 1280
    page = await browser.newPage({ viewport: phoneSize ? { width: 390, height: 844 } : { width: 1280, height: 900 } });
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    // No network but tenderd's: anything fetched from elsewhere (a CDN, a
    // web font) is refused, as on an operator's closed network, and fails
    // the scenario.
    const origin = new URL(base).origin;
    const foreign = [];
    await page.route((u) => /^(https?|wss?):/.test(u.protocol) && u.origin !== origin, (route) => {
      foreign.push(route.request().url());
      return route.abort();
    });
    const run = { signin, live, rollout, pause, paging, phone, laptop: phone, screenshots, states, big }[scenario];
    check(run, `no scenario ${scenario}`);
    await run(page, ...args);
    await checkNotices(page, 'the last view');
    check(!foreign.length, `the dashboard fetched from elsewhere: ${foreign.join(' ')}`);
    const outside = await page.evaluate(() => [...document.styleSheets].flatMap((ss) => [...ss.cssRules])
      .filter((r) => r instanceof CSSFontFaceRule || r instanceof CSSImportRule).map((r) => r.cssText.slice(0, 80)));
    check(!outside.length, `the styles load fonts or other styles: ${outside.join(' ')}`);
    check(!errors.length, `script errors in the page: ${errors.join('; ')}`);
    console.log(`ok ${scenario}`);
  } catch (e) {
    if (page) await page.screenshot({ path: path.join(shots, `${scenario}-failed.png`), fullPage: true }).catch(() => {});
    console.log(`fail: ${e.message.split('\n')[0]}`);
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();
