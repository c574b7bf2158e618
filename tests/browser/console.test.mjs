// The operations console in Debian's headless Chromium against a real server:
// sign in (and the errors for a bad key, a read-only key, a key out of scope,
// a rate-limited key), watch a channel go down when its webhook fails and
// recover it, work the exception queue, look up a position with its live log,
// and reconcile an uploaded CSV. Screenshots go to TEST_OUTPUT_DIR.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { api, KEYS, launch, screenshot, startServer, watchedPage, webhook } from './harness.mjs';

// The one SSE stream the server allows is the position page's, so a test can
// take it first and see the console's 503.
const TOP = 'sse_connections_max = 1';

let hook;
let server;
let browser;

before(async () => {
  hook = await webhook();
  server = await startServer({ hookPort: hook.port, top: TOP });
  browser = await launch();
  const seeded = await api(server, 'POST', '/v1/events', { events: [
    { event_id: 'seed-1', type: 'receipt', source: 'wms', sku: 'SKU-1', location: 'wh-east', qty: 10 },
    { event_id: 'seed-2', type: 'receipt', source: 'wms', sku: 'SKU-1', location: 'wh-west', qty: 4 },
    // Rejected: nothing is in quarantine. It lands in the exception queue.
    { event_id: 'bad-1', type: 'quarantine', source: 'wms', sku: 'SKU-2', location: 'wh-east', qty: 3, action: 'release' },
  ] });
  assert.equal(seeded.status, 200, JSON.stringify(seeded.body));
  assert.deepEqual(seeded.body.results.map((r) => r.status), ['applied', 'applied', 'rejected']);
});

after(async () => {
  await browser?.close();
  await server?.stop();
  await hook?.close();
});

async function signIn(page, key) {
  await page.goto(server.url + '/console');
  await page.fill('#login-key', key);
  await page.press('#login-key', 'Enter');
}

async function signedIn(key) {
  const watched = await watchedPage(browser);
  await signIn(watched.page, key);
  await watched.page.waitForSelector('#who:has-text("Signed in as")');
  return watched;
}

test('a bad key gets a clear 401; keys out of scope or over their rate get 403 and 429, never a blank panel', async () => {
  const { page, errors, context } = await watchedPage(browser);
  await signIn(page, 'not-a-key');
  await page.waitForSelector('#login-error:not([hidden])');
  assert.match(await page.textContent('#login-error'), /not accepted \(401/);
  assert.equal(await page.isVisible('#app'), false);

  // A system key may not read channel status: the channels page says so.
  await signIn(page, KEYS.system);
  await page.waitForSelector('#channels-error:not([hidden])');
  assert.match(await page.textContent('#channels-error'), /role system\) may not do that \(403 forbidden\)/);
  await screenshot(page, 'console-403');
  await page.click('#sign-out');

  // One request a second, burst 2. Once signed in, the test spends the key's
  // tokens itself (on a slow host the console's polling alone may stay under
  // the limit), so the console's next poll is refused.
  await signIn(page, KEYS.slow);
  await page.waitForSelector('#who:has-text("Signed in as")');
  let spending = true;
  const spend = (async () => {
    while (spending) {
      await api(server, 'GET', '/v1/whoami', undefined, KEYS.slow);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  })();
  try {
    await page.waitForSelector('.error[data-status="429"]:not([hidden])', { timeout: 15_000 });
  } finally {
    spending = false;
    await spend;
  }
  const limited = await page.textContent('.error[data-status="429"]:not([hidden])');
  assert.match(limited, /Rate limited \(429 rate_limited\): retry in \d+ s/);
  await page.click('#sign-out');
  assert.deepEqual(errors, []);
  await context.close();
});

test('an observer sees the channels with every action disabled, and is signed out once its key is refused', async () => {
  const { page, errors, context } = await signedIn(KEYS.observer);
  await page.waitForSelector('#channels-table tr[data-channel="hook"]');
  assert.match(await page.textContent('#who'), /ops-observer \(observer\)/);
  for (const action of ['pause', 'resync', 'replay-dlq', 'replay']) {
    assert.equal(await page.isDisabled(`tr[data-channel="hook"] [data-action="${action}"]`), true, action);
  }

  // The key stops being accepted mid-session (here the answer is replaced in
  // the browser; a server only does it after a config change and restart):
  // the console signs out and says why, it does not keep polling blind.
  await page.route('**/v1/channels', (route) => route.fulfill({
    status: 401,
    contentType: 'application/problem+json',
    body: JSON.stringify({ type: 'about:blank', title: 'Unauthorized', status: 401, code: 'unauthorized', detail: 'unknown API key' }),
  }));
  await page.waitForSelector('#login:not([hidden]) #login-error:has-text("no longer accepts this key (401 unauthorized)")', { timeout: 10_000 });
  assert.equal(await page.isVisible('#app'), false);
  assert.equal(await page.$$eval('#channels-table tbody tr', (rows) => rows.length), 0, 'nothing of the old session stays');
  assert.deepEqual(errors, []);
  await context.close();
});

test('a channel goes down when its webhook fails, shows why, and recovers from the console', async () => {
  const { page, errors, context } = await signedIn(KEYS.admin);
  const stateOf = () => page.getAttribute('tr[data-channel="hook"] .state', 'data-state');
  await page.waitForSelector('tr[data-channel="hook"] .state[data-state="healthy"]');

  hook.healthy = false;
  const update = await api(server, 'POST', '/v1/events', { events: [
    { event_id: 'hook-1', type: 'receipt', source: 'wms', sku: 'SKU-1', location: 'wh-east', qty: 1 },
  ] });
  assert.equal(update.status, 200);
  await page.waitForSelector('tr[data-channel="hook"] .state[data-state="down"]', { timeout: 20_000 });
  assert.match(await page.textContent('tr[data-channel="hook"] .last-error'), /500/);
  // Three attempts, then the update is parked in the dead-letter queue.
  await page.waitForFunction(() => {
    const row = document.querySelector('tr[data-channel="hook"]');
    return row && Number(row.cells[5].textContent) > 0;
  }, null, { timeout: 20_000 });
  await screenshot(page, 'console-channel-down');

  // The receiver is back: replay the DLQ from the console.
  hook.healthy = true;
  const before = hook.received;
  await page.click('tr[data-channel="hook"] [data-action="replay-dlq"]');
  await page.waitForSelector('#channels-result:has-text("Replay DLQ hook: done")');
  await page.waitForSelector('tr[data-channel="hook"] .state[data-state="healthy"]', { timeout: 20_000 });
  await page.waitForFunction(() => document.querySelector('tr[data-channel="hook"]').cells[5].textContent === '0',
    null, { timeout: 20_000 });
  assert.ok(hook.received > before, 'the receiver got the replayed update');

  // The table refreshes every 2 s in place: a half-typed replay seq and the
  // keyboard focus survive it. Replaying from a seq asks first.
  await page.fill('tr[data-channel="hook"] input.seq', '2');
  await page.focus('tr[data-channel="hook"] [data-action="replay"]');
  const cursorBefore = await page.textContent('tr[data-channel="hook"] td:nth-of-type(6)');
  await page.waitForTimeout(2500);
  assert.equal(await page.inputValue('tr[data-channel="hook"] input.seq'), '2');
  assert.equal(await page.evaluate(() => document.activeElement.dataset.action), 'replay');
  let asked = '';
  page.once('dialog', (dialog) => { asked = dialog.message(); dialog.accept(); });
  await page.keyboard.press('Enter');
  await page.waitForSelector('#channels-result:has-text("Replay hook: done")');
  assert.match(asked, /after log seq 2\?/);
  assert.ok(cursorBefore !== null);

  // Pause and resume are buttons too, and the API agrees with what the page shows.
  await page.click('tr[data-channel="hook"] [data-action="pause"]');
  await page.waitForSelector('tr[data-channel="hook"] .state[data-state="paused"]');
  assert.equal((await api(server, 'GET', '/v1/channels/hook')).body.state, 'paused');
  await page.click('tr[data-channel="hook"] [data-action="resume"]');
  await page.waitForSelector('tr[data-channel="hook"] .state[data-state="healthy"]');
  assert.notEqual(await stateOf(), 'paused');
  assert.deepEqual(errors, []);
  await context.close();
});

test('an exception is found by filter, opened, and resolved with a note', async () => {
  const { page, errors, context } = await signedIn(KEYS.admin);
  await page.click('nav button[data-page="exceptions"]');
  await page.fill('#exceptions-filter input[name="sku"]', 'SKU-2');
  await page.selectOption('#exceptions-filter select[name="kind"]', 'rejected_event');
  await page.click('#exceptions-filter button[type="submit"]');
  await page.waitForSelector('#exceptions-count:has-text("1 shown")');
  const id = await page.getAttribute('#exceptions-table tbody tr', 'data-exception');
  // A filter that matches nothing says so.
  await page.fill('#exceptions-filter input[name="source"]', 'erp');
  await page.click('#exceptions-filter button[type="submit"]');
  await page.waitForSelector('#exceptions-count:has-text("No exception matches")');
  await page.fill('#exceptions-filter input[name="source"]', 'wms');
  await page.click('#exceptions-filter button[type="submit"]');
  await page.waitForSelector('#exceptions-count:has-text("1 shown")');

  await page.click(`#exceptions-table tr[data-exception="${id}"] button`);
  await page.waitForSelector('#exception-detail:not([hidden])');
  assert.match(await page.textContent('#exception-fields'), /only 0 units qualify/);
  assert.match(await page.inputValue('#exception-event'), /"action": "release"/);
  // Resolving needs a note.
  await page.click('#exception-resolve');
  assert.match(await page.textContent('#exception-error'), /needs a note/);
  await page.fill('#exception-note', 'nothing was ever quarantined: WMS sent the wrong action');
  await page.click('#exception-resolve');
  await page.waitForSelector(`#exception-result:has-text("Exception ${id} is now resolved")`);
  await page.waitForSelector('#exceptions-count:has-text("No exception matches")');
  await screenshot(page, 'console-exception-resolved');

  const stored = await api(server, 'GET', '/v1/exceptions/' + id);
  assert.equal(stored.body.status, 'resolved');
  assert.equal(stored.body.resolution.note, 'nothing was ever quarantined: WMS sent the wrong action');
  assert.equal(stored.body.resolution.by, 'ops-admin');
  assert.deepEqual(errors, []);
  await context.close();
});

test('a position lookup shows every counter, the channel views and the live log', async () => {
  const { page, errors, context } = await signedIn(KEYS.admin);
  const held = await api(server, 'POST', '/v1/reservations', {
    channel: 'web', lines: [{ sku: 'SKU-1', location: 'wh-east', qty: 2 }],
  });
  assert.equal(held.status, 201, JSON.stringify(held.body));
  await page.click('nav button[data-page="position"]');
  await page.fill('#position-form input[name="sku"]', 'SKU-1');
  await page.press('#position-form input[name="sku"]', 'Enter');
  await page.waitForSelector('#position-locations tr[data-location="wh-east"]');
  const truth = (await api(server, 'GET', '/v1/availability/SKU-1')).body;
  const east = truth.locations.find((l) => l.location === 'wh-east');
  const cells = await page.$$eval('#position-locations tr[data-location="wh-east"] td', (tds) => tds.map((td) => td.textContent));
  assert.deepEqual(cells.slice(0, 7).map(Number),
    [east.on_hand, east.reserved, east.allocated, east.quarantined, east.in_transit, east.safety_stock, east.available]);
  assert.equal(east.reserved, 2);
  const web = truth.channels.find((c) => c.channel === 'web');
  assert.equal(await page.textContent('#position-channels tbody tr:first-child td'), String(web.available));

  // The log: the receipts and the hold replayed, then a new event arrives live.
  await page.waitForSelector('#position-log tr:has-text("inventory.reserved")');
  await page.waitForSelector('#position-stream-state:text-is("(live)")');
  const live = await api(server, 'POST', '/v1/events', { events: [
    { event_id: 'live-1', type: 'adjustment', source: 'wms', sku: 'SKU-1', location: 'wh-west', delta: -1, reason: 'damage' },
  ] });
  assert.equal(live.body.results[0].status, 'applied');
  const seq = live.body.results[0].seq;
  await page.waitForSelector(`#position-log tr[data-seq="${seq}"]:has-text("inventory.adjusted")`);
  // ... and the counters follow it.
  const west = truth.locations.find((l) => l.location === 'wh-west');
  await page.waitForSelector(`#position-locations tr[data-location="wh-west"] td:first-of-type:text-is("${west.on_hand - 1}")`);
  await screenshot(page, 'console-position');

  // A SKU with no position anywhere is said so, not a blank table.
  await page.fill('#position-form input[name="sku"]', 'NO-SUCH-SKU');
  await page.press('#position-form input[name="sku"]', 'Enter');
  await page.waitForSelector('#position-error:not([hidden])');
  assert.match(await page.textContent('#position-error'), /NO-SUCH-SKU/);
  assert.deepEqual(errors, []);
  await context.close();
});

test('a reconciliation CSV is checked, reported and applied', async () => {
  const { page, errors, context } = await signedIn(KEYS.admin);
  const now = (await api(server, 'GET', '/v1/availability/SKU-1')).body.locations;
  const before = now.find((l) => l.location === 'wh-west');
  const east = now.find((l) => l.location === 'wh-east');
  await page.click('nav button[data-page="reconcile"]');
  await page.setInputFiles('#reconcile-form input[name="file"]', {
    name: 'erp-snapshot.csv',
    mimeType: 'text/csv',
    buffer: Buffer.from(`sku,location,on_hand\nSKU-1,wh-west,${before.on_hand + 5}\nSKU-1,wh-east,${east.on_hand}\nSKU-1,nowhere,3\n`),
  });
  await page.click('#reconcile-form button[name="check"]');
  await page.waitForSelector('#reconcile-report:not([hidden])');
  const summary = await page.textContent('#reconcile-summary');
  assert.match(summary, /^Checked: 2 positions, 1 matched, 1 differ/);
  assert.match(await page.textContent('#reconcile-table'), /SKU-1wh-west/);
  // Rows are counted after the header: the third data row names no location we have.
  assert.match(await page.textContent('#reconcile-errors'), /row 3: unknown_location/);
  await screenshot(page, 'console-reconciliation');
  assert.equal(await page.isDisabled('#reconcile-apply'), false);
  await page.click('#reconcile-apply');
  await page.waitForSelector('#reconcile-summary:has-text("Applied:")');
  assert.match(await page.textContent('#reconcile-summary'), /1 corrected/);
  const after = (await api(server, 'GET', '/v1/availability/SKU-1')).body.locations.find((l) => l.location === 'wh-west');
  assert.equal(after.on_hand, before.on_hand + 5);
  assert.deepEqual(errors, []);
  await context.close();
});

test('the live strip draws throughput, reservation p99 and event rate from the server counters', async () => {
  const { page, errors, context } = await signedIn(KEYS.admin);
  // Load for a few refreshes: reads, holds (released again) and receipts.
  const load = (async () => {
    for (let i = 0; i < 40; i += 1) {
      await api(server, 'GET', '/v1/availability/SKU-1');
      const held = await api(server, 'POST', '/v1/reservations', {
        channel: 'web', lines: [{ sku: 'SKU-1', location: 'wh-east', qty: 1 }],
      });
      assert.equal(held.status, 201, JSON.stringify(held.body));
      await api(server, 'POST', `/v1/reservations/${held.body.reservation_id}/release`, {});
      await api(server, 'POST', '/v1/events', { events: [
        { event_id: `strip-${i}`, type: 'receipt', source: 'wms', sku: 'SKU-3', location: 'wh-east', qty: 1 },
      ] });
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  })();
  await page.waitForFunction(() => document.querySelector('#spark-rps polyline')?.getAttribute('points').split(' ').length >= 2,
    null, { timeout: 15_000 });
  await page.waitForSelector('#live-p99:has-text("≤")', { timeout: 15_000 });
  await page.waitForFunction(() => Number(document.querySelector('#live-events').textContent) > 0, null, { timeout: 15_000 });
  // Well over the console's own polling (about a request a second): the
  // calls above are counted, routes with path parameters included.
  await page.waitForFunction(() => Number(document.querySelector('#live-rps').textContent) > 5, null, { timeout: 15_000 });
  await load;
  // Keyboard: Tab reaches the page buttons and Enter opens a page.
  await page.focus('nav button[data-page="channels"]');
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.dataset.page), 'exceptions');
  await page.keyboard.press('Enter');
  assert.equal(await page.isVisible('#page-exceptions'), true);
  await screenshot(page, 'console-live');
  assert.deepEqual(errors, []);
  await context.close();
});

test('a 503 (no event stream left) is shown on the panel that needed it', async () => {
  // The earlier position page's stream is freed when the server next writes to
  // it and finds the browser gone (its heartbeat): wait for the slot.
  let taken;
  const deadline = Date.now() + 30_000;
  for (;;) {
    taken = new AbortController();
    const stream = await fetch(server.url + '/v1/events/stream?after=0', {
      headers: { Authorization: 'Bearer ' + KEYS.admin },
      signal: taken.signal,
    });
    if (stream.status === 200) break;
    assert.equal(stream.status, 503);
    assert.ok(Date.now() < deadline, 'the SSE slot was never freed');
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  const { page, errors, context } = await signedIn(KEYS.admin);
  await page.click('nav button[data-page="position"]');
  await page.fill('#position-form input[name="sku"]', 'SKU-1');
  await page.press('#position-form input[name="sku"]', 'Enter');
  await page.waitForSelector('#position-error[data-status="503"]:not([hidden])');
  assert.match(await page.textContent('#position-error'), /cannot serve this now \(503 unavailable\)/);
  // The counters still came: only the live log is missing.
  assert.equal(await page.isVisible('#position-locations tr[data-location="wh-east"]'), true);
  await screenshot(page, 'console-503');
  taken.abort();
  assert.deepEqual(errors, []);
  await context.close();
});

