// 30-browser-chat: the web client (web/) in a real browser -- Debian's
// chromium, headless, driven by playwright-core -- against the real gateways,
// logic and servers.  Two separate browser contexts (alice on a desktop-sized
// window on gateway 0, bob on a phone-sized one on gateway 1):
//
//   - register, log out, log in again (the token is kept in localStorage);
//   - a direct chat started by entering the other's id: both see the
//     messages, unread badge, typing indicator, read state on own messages;
//   - a send refused by the server shows a human error ("no user with that id");
//   - a group created by one and joined by id by the other, chat in it;
//   - bob goes offline (the context's network is cut) while alice sends and
//     while he writes one himself (it stays pending); he comes back by
//     himself, syncs, sees exactly what he missed, in order, once each, and
//     his pending message goes out; alice sees him offline, then online again,
//     and her messages read;
//   - alice's connection loses an ack (a relay in the test drops it and cuts
//     the connection): the message is sent again with the same cid after the
//     reconnect and exists once on both sides;
//   - a reload keeps him logged in, and history pages back (?page=3).
//
// Usage: node 30-browser-chat.js   (run.py starts the system and sets
// IM_WEB_URLS; IM_WEB_SCREENSHOTS is where screenshots go; IM_CHROMIUM the
// browser, default /usr/bin/chromium).  Every wait has a timeout.
'use strict';

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { chromium } = require('playwright-core');

const WAIT = 15000; // ms, any single wait
const DEADLINE = Number(process.env.IM_WEB_DEADLINE_MS || 140000);
const URLS = (process.env.IM_WEB_URLS || '').split(',').filter(Boolean);
const SHOTS = process.env.IM_WEB_SCREENSHOTS || path.join(process.cwd(), 'web-screenshots');
const CHROMIUM = process.env.IM_CHROMIUM || '/usr/bin/chromium';
const TAG = String(process.pid % 100000) + '_' + String(Date.now() % 100000);

function log(...args) {
  console.log('[web %s]', (process.uptime()).toFixed(1), ...args);
}

function directConv(a, b) {
  return BigInt(a) < BigInt(b) ? `d:${a}:${b}` : `d:${b}:${a}`;
}

async function shot(page, name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  const file = path.join(SHOTS, name + '.png');
  await page.screenshot({ path: file, timeout: WAIT });
  return file;
}

// The bodies of the messages in the open chat, in the order shown.
function bodies(page) {
  return page.$$eval('#msg-list .msg .body', (els) => els.map((e) => e.textContent));
}

async function waitBodies(page, want, what) {
  try {
    await page.waitForFunction((w) => JSON.stringify(Array.from(
      document.querySelectorAll('#msg-list .msg .body'), (e) => e.textContent)) === w,
    JSON.stringify(want), { timeout: WAIT });
  } catch (e) {
    throw new Error(`${what}: messages shown ${JSON.stringify(await bodies(page))}, ` +
      `want ${JSON.stringify(want)}`);
  }
}

async function waitText(page, selector, re, what) {
  try {
    await page.waitForFunction(([s, src]) => {
      const e = document.querySelector(s);
      return !!e && new RegExp(src).test(e.textContent);
    }, [selector, re.source], { timeout: WAIT });
  } catch (e) {
    const got = await page.$eval(selector, (x) => x.textContent).catch(() => '(missing)');
    throw new Error(`${what}: ${selector} is ${JSON.stringify(got)}, want ${re}`);
  }
}

async function waitOnline(page, what) {
  await page.waitForSelector('#conn-status[data-state="online"]',
    { state: 'attached', timeout: WAIT })
    .catch(async () => {
      const s = await page.$eval('#conn-status', (x) => x.dataset.state).catch(() => '?');
      throw new Error(`${what}: connection state ${s}, want online`);
    });
}

async function send(page, text) {
  await page.fill('#msg-input', text, { timeout: WAIT });
  await page.press('#msg-input', 'Enter', { timeout: WAIT });
}

// Waits until no own message of the open chat is pending (all acked).
async function waitAcked(page, what) {
  await page.waitForFunction(() => !document.querySelector(
    '#msg-list .msg.own[data-state="pending"]'), null, { timeout: WAIT })
    .catch(() => { throw new Error(`${what}: a message stayed pending (no ack)`); });
}

async function signUp(page, url, name) {
  await page.goto(url + '/?page=3', { timeout: WAIT });
  await page.waitForSelector('#auth:not([hidden])', { timeout: WAIT });
  await page.fill('#username', name);
  await page.fill('#password', 'password1');
  await page.click('#register-btn');
  await page.waitForSelector('#app:not([hidden])', { timeout: WAIT });
  await waitOnline(page, name + ' after register');
  const id = (await page.textContent('#my-id')).trim();
  assert.match(id, /^[1-9][0-9]*$/, 'the user id is shown as a decimal string');
  return id;
}

async function logIn(page, name) {
  await page.fill('#username', name);
  await page.fill('#password', 'password1');
  await page.click('#login-btn');
  await page.waitForSelector('#app:not([hidden])', { timeout: WAIT });
  await waitOnline(page, name + ' after login');
}

async function scenario(browser) {
  assert.equal(URLS.length, 2, 'IM_WEB_URLS names two gateways');
  const [gwA, gwB] = URLS;
  const ctxA = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  const ctxB = await browser.newContext({
    viewport: { width: 390, height: 760 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2,
  });
  const pageErrors = [];
  const pa = await ctxA.newPage();
  const pb = await ctxB.newPage();
  for (const [who, p] of [['alice', pa], ['bob', pb]]) {
    p.on('pageerror', (e) => pageErrors.push(`${who}: ${e.message}`));
    p.on('console', (m) => { if (m.type() === 'error') log(`${who} console: ${m.text()}`); });
  }
  const pages = { alice: pa, bob: pb };
  try {
    await run(pa, pb, ctxA, ctxB, gwA, gwB);
  } catch (e) {
    for (const [who, p] of Object.entries(pages)) {
      await shot(p, 'failure-' + who).catch(() => {});
    }
    throw e;
  }
  assert.deepEqual(pageErrors, [], 'no uncaught errors in the pages');
  await ctxA.close();
  await ctxB.close();
}

async function run(pa, pb, ctxA, ctxB, gwA, gwB) {
  const alice = 'alice_' + TAG, bob = 'bob_' + TAG;

  // ---------------------------------------------------------- accounts
  const aId = await signUp(pa, gwA, alice);
  const session = await pa.evaluate(() => JSON.parse(localStorage.getItem('im.session')));
  assert.equal(session.userId, aId, 'session kept in localStorage');
  assert.equal(typeof session.token, 'string');
  await pa.click('#logout-btn');
  await pa.waitForSelector('#auth:not([hidden])', { timeout: WAIT });
  assert.equal(await pa.evaluate(() => localStorage.getItem('im.session')), null,
    'log out forgets the token');
  await pa.fill('#username', alice);
  await pa.fill('#password', 'wrong-password');
  await pa.click('#login-btn');
  await waitText(pa, '#auth-error', /Wrong username or password/, 'bad login');
  await logIn(pa, alice);
  assert.equal((await pa.textContent('#my-id')).trim(), aId, 'same id after login');
  const bId = await signUp(pb, gwB, bob);
  assert.notEqual(aId, bId);
  log('alice', aId, 'on', gwA, '; bob', bId, 'on', gwB);
  await shot(pb, '01-bob-phone-empty');

  // ---------------------------------------------------------- direct chat
  // Started by username (GET /api/v1/users?name=); the header names bob.
  const conv = directConv(aId, bId);
  await pa.fill('#new-chat-id', bob.toUpperCase());
  await pa.click('#new-chat-btn');
  await waitText(pa, '#chat-sub', new RegExp('user id ' + bId), 'direct chat header');
  await waitText(pa, '#chat-title', new RegExp(bob), 'direct chat titled by username');
  await send(pa, 'hello bob');
  await waitAcked(pa, 'first direct message');
  await pb.waitForSelector(`#conv-list .conv[data-conv="${conv}"] .unread`, { timeout: WAIT });
  assert.equal((await pb.textContent(`#conv-list .conv[data-conv="${conv}"] .unread`)).trim(),
    '1', 'bob: one unread');
  await shot(pb, '02-bob-phone-unread');
  await pb.click(`#conv-list .conv[data-conv="${conv}"]`);
  await waitBodies(pb, ['hello bob'], 'bob opens the chat');
  await pa.waitForSelector('#msg-list .msg.own[data-state="read"]', { timeout: WAIT })
    .catch(() => { throw new Error('alice: her message never showed "read"'); });
  // Typing reaches alice while bob writes; then his reply.
  await pb.locator('#msg-input').pressSequentially('hi alice', { delay: 20, timeout: WAIT });
  await waitText(pa, '#chat-sub', /is typing/, 'alice sees bob typing');
  await pb.press('#msg-input', 'Enter');
  await waitBodies(pa, ['hello bob', 'hi alice'], 'alice gets the reply');
  await waitAcked(pb, 'bob reply');
  await pb.waitForSelector('#msg-list .msg.own[data-state="read"]', { timeout: WAIT })
    .catch(() => { throw new Error('bob: his reply never showed "read"'); });
  await waitBodies(pb, ['hello bob', 'hi alice'], 'bob sees his own reply once');

  // A refused send reads as words, not a code.
  await pa.fill('#new-chat-id', '999999999999');
  await pa.click('#new-chat-btn');
  await send(pa, 'anyone there?');
  await pa.waitForSelector('#msg-list .msg.own[data-state="failed"]', { timeout: WAIT });
  await waitText(pa, '#msg-list .msg.own[data-state="failed"] .meta', /no user with that id/,
    'unknown user');
  await waitText(pa, '#banner-text', /no user with that id/, 'error banner');
  await pa.click('#banner-close');
  await pa.click('#msg-list .msg.failed .fail-actions button:nth-child(2)');
  await waitBodies(pa, [], 'the failed message is deleted');

  // ---------------------------------------------------------- group
  await pa.fill('#group-name', 'team ' + TAG);
  await pa.click('#create-group-btn');
  await waitText(pa, '#chat-title', new RegExp('team ' + TAG), 'alice: group open');
  await pa.waitForSelector('#group-list li[data-group]', { timeout: WAIT });
  const gid = await pa.getAttribute('#group-list li[data-group]', 'data-group');
  assert.match(gid, /^[1-9][0-9]*$/);
  await waitText(pa, '#chat-sub', new RegExp('group id ' + gid), 'group id shown');
  await pb.click('#back-btn');
  await pb.fill('#join-group-id', gid);
  await pb.click('#join-group-btn');
  await waitText(pb, '#chat-title', new RegExp('team ' + TAG), 'bob: joined group open');
  await waitText(pb, '#chat-sub', /2 members/, 'bob: member count');
  await send(pa, 'hello team');
  await waitBodies(pb, ['hello team'], 'bob gets the group message');
  await send(pb, 'hi team');
  await waitBodies(pa, ['hello team', 'hi team'], 'alice gets the group reply');
  await waitText(pa, '#msg-list .msg:not(.own) .from', new RegExp(bob),
    'sender shown by username in a group');
  await pa.waitForSelector('#msg-list .msg.own[data-state="read"]', { timeout: WAIT })
    .catch(() => { throw new Error('alice: group message never showed "read"'); });
  await shot(pa, '03-alice-desktop-group');
  await shot(pb, '04-bob-phone-group');

  // ---------------------------------------------------------- offline
  const gconv = 'g:' + gid;
  await pb.click('#back-btn');
  await pb.click(`#conv-list .conv[data-conv="${conv}"]`);
  await waitBodies(pb, ['hello bob', 'hi alice'], 'bob back in the direct chat');
  await ctxB.setOffline(true);
  await pb.waitForSelector('#conn-status[data-state="offline"]',
    { state: 'attached', timeout: WAIT });
  await waitText(pb, '#chat-sub', /not connected/, 'bob is told he is offline');
  log('bob is offline');
  // What he writes now waits in his outbox (kept in localStorage).
  await send(pb, 'written offline');
  await pb.waitForSelector('#msg-list .msg.own[data-state="pending"]', { timeout: WAIT });
  await pa.click(`#conv-list .conv[data-conv="${conv}"]`);
  await waitBodies(pa, ['hello bob', 'hi alice'], 'alice in the direct chat');
  // His presence goes offline once his gateway sees the connection gone.
  await pa.waitForSelector(`#conv-list .conv[data-conv="${conv}"] .dot[data-online="false"]`,
    { timeout: WAIT }).catch(() => { throw new Error('alice: bob never showed offline'); });
  const missed = ['missed 1', 'missed 2: ça va → ok', 'missed 3'];
  for (const m of missed) await send(pa, m);
  await waitAcked(pa, 'messages to offline bob');
  await pa.click(`#conv-list .conv[data-conv="${gconv}"]`);
  await send(pa, 'missed in group');
  await waitAcked(pa, 'group message while bob is offline');
  await pa.click(`#conv-list .conv[data-conv="${conv}"]`);
  await shot(pb, '05-bob-phone-offline');
  await ctxB.setOffline(false);
  await waitOnline(pb, 'bob reconnects by himself');
  log('bob is back');
  await waitBodies(pb, ['hello bob', 'hi alice', ...missed, 'written offline'],
    'bob: exactly the missed, in order, then his own');
  await waitAcked(pb, 'bob: his offline message is sent after the reconnect');
  await waitBodies(pa, ['hello bob', 'hi alice', ...missed, 'written offline'],
    'alice gets what bob wrote offline, once');
  await pa.waitForSelector(`#conv-list .conv[data-conv="${conv}"] .dot[data-online="true"]`,
    { timeout: WAIT }).catch(() => { throw new Error('alice: bob never showed online'); });
  // He is looking at the chat: all of alice's messages turn "read".
  await pa.waitForFunction(() => {
    const own = document.querySelectorAll('#msg-list .msg.own');
    return own.length === 4 && Array.from(own).every((e) => e.dataset.state === 'read');
  }, null, { timeout: WAIT }).catch(() => { throw new Error('alice: missed messages not read'); });
  await shot(pa, '06-alice-desktop-direct');
  await shot(pb, '07-bob-phone-synced');
  await composite(pa, pb); // both side by side, for the README
  await pb.click('#back-btn');
  await waitText(pb, `#conv-list .conv[data-conv="${gconv}"] .unread`, /^1$/,
    'bob: the group message he missed is unread');
  await pb.click(`#conv-list .conv[data-conv="${gconv}"]`);
  await waitBodies(pb, ['hello team', 'hi team', 'missed in group'], 'bob: group after sync');

  // ---------------------------------------------------------- a lost ack
  // alice's next connection goes through a relay in this test that swallows
  // the first ack and cuts the connection: her message stays pending, goes
  // out again with the same cid after the reconnect, and exists once.
  const sentCids = [];
  let dropAck = true;
  await pa.routeWebSocket(/\/ws\?token=/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((m) => {
      const f = JSON.parse(String(m));
      if (f.type === 'send') sentCids.push(f.cid);
      server.send(m);
    });
    server.onMessage((m) => {
      const f = JSON.parse(String(m));
      if (dropAck && f.type === 'ack') {
        dropAck = false;
        server.close().catch(() => {});
        ws.close({ code: 1001, reason: 'test: connection lost' }).catch(() => {});
        return;
      }
      ws.send(m);
    });
  });
  // (The route takes effect in pages loaded after it.)
  await pa.reload({ timeout: WAIT });
  await waitOnline(pa, 'alice reconnects through the relay');
  await pa.click(`#conv-list .conv[data-conv="${conv}"]`);
  await waitBodies(pa, [missed[1], missed[2], 'written offline'],
    'alice: the latest page after her reload');
  await send(pa, 'ack lost');
  await waitAcked(pa, 'alice: the message whose ack was lost');
  assert.ok(!dropAck, 'the relay dropped an ack');
  assert.ok(sentCids.length >= 2 && sentCids.every((c) => c === sentCids[0]),
    `sent again with the same cid: ${JSON.stringify(sentCids)}`);
  const all = ['hello bob', 'hi alice', ...missed, 'written offline', 'ack lost'];
  await waitBodies(pa, all.slice(-4), 'alice: the retried message once');
  await pb.click('#back-btn');
  await pb.click(`#conv-list .conv[data-conv="${conv}"]`);
  await waitBodies(pb, all, 'bob: the retried message once');

  // ---------------------------------------------------------- reload, history
  await pb.reload({ timeout: WAIT });
  await waitOnline(pb, 'bob after reload (token from localStorage)');
  await pb.click(`#conv-list .conv[data-conv="${conv}"]`);
  await waitBodies(pb, all.slice(-3), 'bob: the latest page of history');
  for (let pages = 1; await pb.$('#load-older-btn'); pages++) {
    assert.ok(pages < 5, 'history ends');
    const shown = (await bodies(pb)).length;
    await pb.click('#load-older-btn', { timeout: WAIT });
    await pb.waitForFunction((n) => document.querySelectorAll('#msg-list .msg').length > n,
      shown, { timeout: WAIT });
    await pb.waitForSelector('#history-status:not(:has-text("Loading"))', { timeout: WAIT });
  }
  await waitBodies(pb, all, 'bob: every page of history, in order');
  await waitText(pb, '#history-status', /Beginning of the conversation/, 'history exhausted');
  await shot(pb, '08-bob-phone-history');
}

async function composite(pa, pb) {
  const a = (await pa.screenshot({ timeout: WAIT })).toString('base64');
  const b = (await pb.screenshot({ timeout: WAIT })).toString('base64');
  const page = await pa.context().browser().newPage({
    viewport: { width: 1100 + 390 + 60, height: 760 },
  });
  await page.setContent(`<body style="margin:0;background:#c9d1dc;display:flex;gap:20px;
    padding:20px;align-items:flex-start">
    <img src="data:image/png;base64,${a}" style="width:1100px;box-shadow:0 2px 12px #0004">
    <img src="data:image/png;base64,${b}" style="width:390px;box-shadow:0 2px 12px #0004">
    </body>`);
  await page.waitForFunction(() => Array.from(document.images).every((i) => i.complete),
    null, { timeout: WAIT });
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, 'overview.png'), fullPage: true, timeout: WAIT });
  await page.close();
}

async function main() {
  // Screenshots of an earlier failed run must not be mistaken for this one's.
  for (const f of ['failure-alice.png', 'failure-bob.png']) {
    fs.rmSync(path.join(SHOTS, f), { force: true });
  }
  const timer = setTimeout(() => {
    console.error(`30-browser-chat: over ${DEADLINE} ms, giving up`);
    process.exit(1);
  }, DEADLINE);
  let browser = null;
  try {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking'],
      timeout: 30000,
    });
    log('chromium', browser.version());
    await scenario(browser);
    log('ok: screenshots in', SHOTS);
  } finally {
    if (browser) await browser.close().catch(() => {});
    clearTimeout(timer);
  }
}

main().catch((e) => {
  console.error('FAIL 30-browser-chat:', e && e.stack ? e.stack : e);
  process.exitCode = 1;
});
