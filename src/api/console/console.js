// stockwire operations console. Plain DOM, no framework, no build step: this
// file is compiled into the server and served at /console/console.js. Every
// call goes to this server's own API with the operator's key; text from the
// server is only ever set as textContent (never parsed as HTML).
'use strict';

const KEY_STORAGE = 'stockwire.console.key';
const REFRESH_MS = 2000;
const SPARK_POINTS = 60;
// The position page replays at most this many of the log's newest entries.
const LOG_WINDOW = 5000;
const LOG_ROWS = 25;
const EXCEPTIONS_PAGE = 100;

const state = {
  key: sessionStorage.getItem(KEY_STORAGE),
  who: null,
  page: 'channels',
  timers: [],
  exception: null,
  stream: null,
  reconcile: null,
  metrics: null,
  series: { rps: [], p99: [], events: [] },
  // Polling waits until then after a 429 (its Retry-After).
  quietUntil: 0,
  // Which lookup the position page shows: an older answer is dropped.
  lookup: 0,
  // The exceptions page shown: {after, last} ids.
  exceptionsPage: null,
};

// ---------------------------------------------------------------- API calls

class ApiError extends Error {
  constructor(status, code, detail, retryAfter) {
    super(detail);
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }
}

async function request(method, path, options = {}) {
  const headers = {};
  const key = options.key ?? state.key;
  if (key) headers.Authorization = 'Bearer ' + key;
  let body;
  if (options.body !== undefined) {
    headers['Content-Type'] = options.contentType || 'application/json';
    body = options.contentType ? options.body : JSON.stringify(options.body);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body, cache: 'no-store', signal: options.signal });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(0, 'unreachable', 'the server did not answer (' + error.message + ')');
  }
  if (!response.ok) {
    let problem = {};
    try {
      problem = await response.json();
    } catch (_) {
      // Not problem+json: the status says enough.
    }
    const error = new ApiError(response.status, problem.code || 'http_' + response.status,
      problem.detail || problem.title || response.statusText, response.headers.get('Retry-After'));
    if (error.status === 429) {
      state.quietUntil = Date.now() + 1000 * (Number(error.retryAfter) || 1);
    }
    if (error.status === 401 && state.who && options.key === undefined) {
      // The key was revoked or the server's keys changed: nothing more will work.
      signOut();
      showError('login-error', 'The server no longer accepts this key (401 ' + error.code + '): sign in again.');
    }
    throw error;
  }
  return response;
}

async function api(method, path, options) {
  const response = await request(method, path, options);
  return response.json();
}

// A sentence an operator can act on, for every way a call can fail.
function describe(error) {
  if (!(error instanceof ApiError)) return 'Unexpected error: ' + error.message;
  const role = state.who ? state.who.role : 'unknown';
  switch (error.status) {
    case 0:
      return 'The server is unreachable: ' + error.detail + '.';
    case 401:
      return 'Not signed in, or the key was not accepted (401 ' + error.code + '). Sign out and sign in again.';
    case 403:
      return 'This key (role ' + role + ') may not do that (403 ' + error.code + '): ' + error.detail;
    case 429:
      return 'Rate limited (429 ' + error.code + '): retry in ' + (error.retryAfter || 'a few') + ' s.';
    case 503:
      return 'The server cannot serve this now (503 ' + error.code + '): ' + error.detail
        + '. Retry shortly; if it lasts, the server is recovering, shutting down or its journal failed (see /readyz).';
    default:
      return error.status + ' ' + error.code + ': ' + error.detail;
  }
}

function showError(id, error) {
  const box = document.getElementById(id);
  box.textContent = typeof error === 'string' ? error : describe(error);
  box.dataset.status = error instanceof ApiError ? String(error.status) : '';
  box.hidden = false;
}

function clearError(id) {
  const box = document.getElementById(id);
  box.hidden = true;
  box.textContent = '';
}

// ---------------------------------------------------------------- DOM helpers

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else if (name === 'class') node.className = value;
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function cell(value) {
  return el('td', {}, value === undefined || value === null ? '–' : value);
}

function canAct(roles) {
  return state.who !== null && roles.includes(state.who.role);
}

function setResult(id, text) {
  document.getElementById(id).textContent = text;
}

// ---------------------------------------------------------------- sign in

async function signIn(key) {
  const who = await api('GET', '/v1/whoami', { key });
  state.key = key;
  state.who = who;
  sessionStorage.setItem(KEY_STORAGE, key);
  document.getElementById('login').hidden = true;
  document.getElementById('app').hidden = false;
  document.getElementById('sign-out').hidden = false;
  const scope = who.channel ? ' · channel ' + who.channel
    : who.locations.length ? ' · ' + who.locations.join(', ') : '';
  document.getElementById('who').textContent = 'Signed in as ' + who.key + ' (' + who.role + scope + ')';
  startTimers();
  showPage(pageFromHash());
}

function signOut() {
  stopTimers();
  stopStream();
  sessionStorage.removeItem(KEY_STORAGE);
  state.key = null;
  state.who = null;
  state.metrics = null;
  state.series = { rps: [], p99: [], events: [] };
  document.getElementById('app').hidden = true;
  document.getElementById('sign-out').hidden = true;
  document.getElementById('who').textContent = '';
  document.getElementById('login').hidden = false;
  document.getElementById('login-key').value = '';
  // Nothing the previous key could see stays on the page.
  for (const tbody of document.querySelectorAll('#app tbody, #app tfoot')) tbody.replaceChildren();
  for (const id of ['exception-detail', 'position-view', 'reconcile-report']) document.getElementById(id).hidden = true;
  for (const box of document.querySelectorAll('#app .error')) { box.hidden = true; box.textContent = ''; }
  for (const box of document.querySelectorAll('#app .result')) box.textContent = '';
  state.exception = null;
  state.reconcile = null;
  channelRows.clear();
  document.getElementById('login-key').focus();
}

function startTimers() {
  stopTimers();
  refreshChannels();
  refreshLive();
  const polite = (work) => () => { if (Date.now() >= state.quietUntil) work(); };
  state.timers.push(setInterval(polite(() => { if (state.page === 'channels') refreshChannels(); }), REFRESH_MS));
  state.timers.push(setInterval(polite(refreshLive), REFRESH_MS));
}

function stopTimers() {
  state.timers.forEach(clearInterval);
  state.timers = [];
}

// ---------------------------------------------------------------- pages

const PAGES = ['channels', 'exceptions', 'position', 'reconcile'];

function pageFromHash() {
  const page = location.hash.replace('#', '');
  return PAGES.includes(page) ? page : 'channels';
}

function showPage(page) {
  state.page = page;
  for (const name of PAGES) {
    document.getElementById('page-' + name).hidden = name !== page;
  }
  for (const button of document.querySelectorAll('nav button')) {
    if (button.dataset.page === page) button.setAttribute('aria-current', 'page');
    else button.removeAttribute('aria-current');
  }
  if (location.hash !== '#' + page) history.replaceState(null, '', '#' + page);
  if (page === 'channels') refreshChannels();
  if (page === 'exceptions') loadExceptions();
  if (page !== 'position') stopStream();
}

// ---------------------------------------------------------------- channels

// One row per channel, built once and updated in place on every refresh, so
// a focused button or a half-typed replay seq survives the 2 s refresh.
const channelRows = new Map();

async function refreshChannels() {
  let answer;
  try {
    answer = await api('GET', '/v1/channels');
  } catch (error) {
    showError('channels-error', error);
    return;
  }
  clearError('channels-error');
  const tbody = document.querySelector('#channels-table tbody');
  const listed = new Set();
  for (const channel of answer.channels) {
    listed.add(channel.id);
    let row = channelRows.get(channel.id);
    if (!row || !row.element.isConnected) {
      row = channelRow(channel.id);
      channelRows.set(channel.id, row);
      tbody.append(row.element);
    }
    row.sink.textContent = channel.sink;
    row.state.textContent = channel.state;
    row.state.className = 'state state-' + channel.state;
    row.state.dataset.state = channel.state;
    row.lag.textContent = channel.lag_seconds;
    row.pending.textContent = channel.pending;
    row.dlq.textContent = channel.dlq_depth;
    row.cursor.textContent = channel.cursor_seq;
    row.error.textContent = channel.last_error || '';
    const paused = channel.state === 'paused';
    row.toggle.textContent = paused ? 'Resume' : 'Pause';
    row.toggle.dataset.action = paused ? 'resume' : 'pause';
  }
  for (const [id, row] of channelRows) {
    if (!listed.has(id)) {
      row.element.remove();
      channelRows.delete(id);
    }
  }
}

function channelRow(id) {
  const admin = canAct(['admin']);
  const button = (label, action, onclick) => el('button', {
    type: 'button',
    disabled: !admin,
    title: admin ? undefined : 'needs an admin key',
    'data-action': action,
    onclick,
  }, label);
  const seq = el('input', { type: 'number', min: 0, value: 0, 'aria-label': 'replay ' + id + ' from seq', class: 'seq' });
  const row = {
    sink: el('td'), lag: el('td'), pending: el('td'), dlq: el('td'), cursor: el('td'),
    error: el('td', { class: 'last-error' }),
    state: el('span', { class: 'state' }),
  };
  row.toggle = button('Pause', 'pause', () => {
    const action = row.toggle.dataset.action;
    channelAction(id, action === 'resume' ? 'Resume' : 'Pause', '/' + action, {});
  });
  const replayFromSeq = () => {
    const from = Number(seq.value);
    // Re-delivering from an early seq sends the channel a lot: say so first.
    if (window.confirm('Re-deliver every update of channel ' + id + ' after log seq ' + from + '?')) {
      channelAction(id, 'Replay', '/replay', { from_seq: from });
    }
  };
  row.element = el('tr', { 'data-channel': id },
    el('th', { scope: 'row' }, id), row.sink, el('td', {}, row.state), row.lag, row.pending, row.dlq,
    row.cursor, row.error,
    el('td', { class: 'actions' }, row.toggle,
      button('Resync', 'resync', () => channelAction(id, 'Resync', '/resync', {})),
      button('Replay DLQ', 'replay-dlq', () => channelAction(id, 'Replay DLQ', '/replay', { from: 'dead_letters' })),
      seq,
      button('Replay', 'replay', replayFromSeq)));
  return row;
}

async function channelAction(id, label, path, body) {
  try {
    const answer = await api('POST', '/v1/channels/' + encodeURIComponent(id) + path, { body });
    const queued = answer.queued_skus !== undefined ? ' (' + answer.queued_skus + ' SKUs queued)' : '';
    setResult('channels-result', label + ' ' + id + ': done' + queued + '.');
    clearError('channels-error');
  } catch (error) {
    showError('channels-error', error);
  }
  refreshChannels();
}

// ---------------------------------------------------------------- exceptions

// The queue is read oldest first, a page at a time: `after` is the last id
// of the page before (0: the first page).
async function loadExceptions(after = 0) {
  const form = document.getElementById('exceptions-filter');
  const query = new URLSearchParams({ limit: String(EXCEPTIONS_PAGE) });
  if (after) query.set('after', String(after));
  for (const name of ['kind', 'status', 'sku', 'location', 'source']) {
    const value = form.elements[name].value.trim();
    if (value) query.set(name, value);
  }
  let answer;
  try {
    answer = await api('GET', '/v1/exceptions?' + query);
  } catch (error) {
    showError('exceptions-error', error);
    return;
  }
  clearError('exceptions-error');
  const rows = answer.exceptions.map((item) => el('tr', { 'data-exception': item.id },
    el('th', { scope: 'row' }, item.id),
    cell(item.kind), cell(item.status), cell(item.code), cell(item.sku), cell(item.location),
    cell(item.source), cell(item.created_at),
    el('td', {}, el('button', { type: 'button', onclick: () => openException(item.id) }, 'Open'))));
  fill(document.querySelector('#exceptions-table tbody'), rows);
  state.exceptionsPage = { after, last: answer.exceptions.length ? answer.exceptions[answer.exceptions.length - 1].id : after };
  document.getElementById('exceptions-count').textContent = rows.length === 0
    ? (after ? 'No more exceptions match.' : 'No exception matches.')
    : rows.length + ' shown, oldest first' + (after ? ', after #' + after : '') + '.';
  document.getElementById('exceptions-next').disabled = rows.length < EXCEPTIONS_PAGE;
  document.getElementById('exceptions-first').disabled = after === 0;
}

async function openException(id) {
  clearError('exception-error');
  setResult('exception-result', '');
  let item;
  try {
    item = await api('GET', '/v1/exceptions/' + id);
  } catch (error) {
    showError('exceptions-error', error);
    return;
  }
  showException(item);
  document.getElementById('exception-detail').hidden = false;
  document.getElementById('exception-title').focus();
}

function showException(item) {
  state.exception = item;
  document.getElementById('exception-title').textContent = 'Exception ' + item.id + ' · ' + item.kind + ' · ' + item.status;
  document.getElementById('exception-title').tabIndex = -1;
  const fields = [
    ['code', item.code], ['detail', item.detail], ['sku', item.sku], ['location', item.location],
    ['event id', item.event_id], ['source', item.source], ['correlation id', item.correlation_id],
    ['created', item.created_at],
  ];
  if (item.resolution) {
    const r = item.resolution;
    fields.push(['resolved', r.at + ' by ' + r.by], ['note', r.note]);
    if (r.retried_event_id) fields.push(['retried as', r.retried_event_id + (r.seq ? ' (seq ' + r.seq + ')' : '')]);
  }
  const list = document.getElementById('exception-fields');
  list.replaceChildren(...fields.filter(([, v]) => v !== null && v !== undefined)
    .flatMap(([name, value]) => [el('dt', {}, name), el('dd', {}, value)]));
  const text = document.getElementById('exception-event');
  text.value = item.payload ? JSON.stringify(item.payload, null, 2) : '';
  text.dataset.original = text.value;
  const open = item.status === 'open';
  const system = canAct(['admin', 'system']);
  for (const id of ['exception-retry', 'exception-resolve']) {
    const button = document.getElementById(id);
    button.disabled = !open || !system;
    button.title = !system ? 'needs an admin or system key' : !open ? 'already resolved' : '';
  }
  document.getElementById('exception-retry').hidden = !item.payload;
  text.hidden = !item.payload;
  document.querySelector('label[for=exception-event]').hidden = !item.payload;
}

async function retryException() {
  const item = state.exception;
  const text = document.getElementById('exception-event');
  let body = {};
  if (text.value !== text.dataset.original) {
    try {
      body = { event: JSON.parse(text.value) };
    } catch (error) {
      showError('exception-error', 'The corrected event is not valid JSON: ' + error.message);
      return;
    }
  }
  await exceptionAction(item, 'retry', body);
}

async function resolveException() {
  const note = document.getElementById('exception-note').value.trim();
  if (!note) {
    showError('exception-error', 'A resolution needs a note: say why it is closed.');
    document.getElementById('exception-note').focus();
    return;
  }
  await exceptionAction(state.exception, 'resolve', { note });
}

async function exceptionAction(item, action, body) {
  clearError('exception-error');
  try {
    const answer = await api('POST', '/v1/exceptions/' + item.id + '/' + action, { body });
    showException(answer);
    const how = answer.resolution && answer.resolution.retried_event_id
      ? ' (event ' + answer.resolution.retried_event_id + ' applied)' : '';
    setResult('exception-result', 'Exception ' + answer.id + ' is now ' + answer.status + how + '.');
    document.getElementById('exception-note').value = '';
  } catch (error) {
    showError('exception-error', error);
  }
  loadExceptions(state.exceptionsPage ? state.exceptionsPage.after : 0);
}

// ---------------------------------------------------------------- position

async function lookUp(sku) {
  clearError('position-error');
  stopStream();
  fill(document.querySelector('#position-log tbody'), []);
  if (await showPosition(sku)) followLog(sku);
}

// Fetches and draws the SKU's counters and channel views; false when the
// lookup failed (the error is shown). Only the newest lookup's answer is drawn.
async function showPosition(sku) {
  const mine = ++state.lookup;
  let answer;
  try {
    answer = await api('GET', '/v1/availability/' + encodeURIComponent(sku));
  } catch (error) {
    if (mine !== state.lookup) return false;
    document.getElementById('position-view').hidden = true;
    showError('position-error', error);
    return false;
  }
  if (mine !== state.lookup) return false;
  const counters = ['on_hand', 'reserved', 'allocated', 'quarantined', 'in_transit', 'safety_stock', 'available'];
  const locations = answer.locations || [];
  fill(document.querySelector('#position-locations tbody'), locations.map((l) => el('tr', { 'data-location': l.location },
    el('th', { scope: 'row' }, l.location), ...counters.map((c) => cell(l[c])), cell(l.version))));
  const foot = document.querySelector('#position-locations tfoot');
  foot.replaceChildren();
  if (answer.total) {
    foot.append(el('tr', {}, el('th', { scope: 'row' }, 'total'), ...counters.map((c) => cell(answer.total[c])), cell('')));
  }
  const channels = answer.channels || (answer.channel ? [{ channel: answer.channel, available: answer.available }] : []);
  fill(document.querySelector('#position-channels tbody'), channels.map((c) => el('tr', {},
    el('th', { scope: 'row' }, c.channel), cell(c.available))));
  document.getElementById('position-view').hidden = false;
  if (locations.length === 0) showError('position-error', 'No position for ' + sku + ' at any location.');
  else clearError('position-error');
  return true;
}

function stopStream() {
  if (state.stream) state.stream.abort();
  state.stream = null;
}

// The SSE stream needs the Authorization header, which EventSource cannot send:
// read it with fetch and parse the frames here. A stream that ends (server
// restart, idle proxy) is resumed after the last entry seen, as EventSource
// would with Last-Event-ID.
async function followLog(sku) {
  const label = document.getElementById('position-stream-state');
  const controller = new AbortController();
  state.stream = controller;
  let redraw = null;
  // Counters are redrawn at most every 250 ms however fast entries arrive.
  const later = () => {
    if (redraw === null) redraw = setTimeout(() => { redraw = null; if (!controller.signal.aborted) showPosition(sku); }, 250);
  };
  try {
    const page = await api('GET', '/v1/events?limit=1', { signal: controller.signal });
    let after = Math.max(0, page.head - LOG_WINDOW);
    label.textContent = '(replaying the newest ' + Math.min(page.head, LOG_WINDOW) + ' log entries, then live)';
    if (page.head === 0) label.textContent = '(live)';
    for (;;) {
      const response = await request('GET', '/v1/events/stream?after=' + after, { signal: controller.signal });
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = frame.split('\n').filter((line) => line.startsWith('data:'))
            .map((line) => line.slice(5).replace(/^ /, '')).join('\n');
          if (!data) continue;
          let entry;
          try {
            entry = JSON.parse(data);
          } catch (_) {
            continue; // not a log entry: skip the frame, keep the stream
          }
          after = Math.max(after, entry.seq);
          const live = entry.seq >= page.head;
          if (live) label.textContent = '(live)';
          if (entry.sku === sku) {
            addLogRow(entry);
            // A change after the lookup: the counters above are stale.
            if (live && entry.seq > page.head) later();
          }
        }
      }
      label.textContent = '(the stream ended; resuming)';
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  } catch (error) {
    if (error.name === 'AbortError') return;
    label.textContent = '';
    showError('position-error', error);
  }
}

function addLogRow(entry) {
  const tbody = document.querySelector('#position-log tbody');
  const change = Object.entries(entry.delta || {}).map(([k, v]) => k + ' ' + (v > 0 ? '+' : '') + v).join(', ');
  tbody.prepend(el('tr', { 'data-seq': entry.seq },
    el('th', { scope: 'row' }, entry.seq), cell(entry.type), cell(entry.location), cell(change),
    cell(entry.source), cell(entry.recorded_at)));
  while (tbody.rows.length > LOG_ROWS) tbody.deleteRow(tbody.rows.length - 1);
}

// ---------------------------------------------------------------- reconciliation

async function reconcile(apply) {
  clearError('reconcile-error');
  const form = document.getElementById('reconcile-form');
  const source = form.elements.source.value.trim();
  const file = form.elements.file.files[0];
  if (!file) {
    showError('reconcile-error', 'Choose a CSV file first.');
    return;
  }
  const query = new URLSearchParams({ source, apply: apply ? 'true' : 'false' });
  let report;
  try {
    report = await api('POST', '/v1/reconciliations?' + query, { body: await file.text(), contentType: 'text/csv' });
  } catch (error) {
    showError('reconcile-error', error);
    return;
  }
  state.reconcile = report;
  document.getElementById('reconcile-summary').textContent = (apply ? 'Applied: ' : 'Checked: ')
    + report.checked + ' positions, ' + report.matched + ' matched, ' + report.differences + ' differ'
    + (apply ? ', ' + report.applied + ' corrected' : '') + ', ' + report.rejected_rows + ' rows rejected.';
  fill(document.querySelector('#reconcile-table tbody'), report.exceptions.map((d) => el('tr', {},
    el('th', { scope: 'row' }, d.sku), cell(d.location), cell(d.engine_on_hand), cell(d.source_on_hand),
    cell(d.diff), cell(d.applied ? 'yes' : d.code || 'no'))));
  document.getElementById('reconcile-errors').replaceChildren(...report.errors.map((e) =>
    el('li', {}, 'row ' + e.row + ': ' + e.code + ' ' + e.detail)));
  document.getElementById('reconcile-report').hidden = false;
  document.getElementById('reconcile-apply').disabled = apply || report.differences === 0 || !canAct(['admin', 'system']);
}

// ---------------------------------------------------------------- live sparklines

// Parses the Prometheus text lines of the families the sparklines use.
function readMetrics(text) {
  const sample = { requests: 0, events: 0, buckets: new Map(), at: performance.now() };
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    // Label values may hold braces (route="/v1/availability/{sku}"): the
    // label set runs to the last "}" before the value.
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$/.exec(line);
    if (!match) continue;
    const [, name, labels = '', value] = match;
    const number = Number(value);
    if (name === 'stockwire_http_requests_total') sample.requests += number;
    else if (name === 'stockwire_events_applied_total') sample.events += number;
    else if (name === 'stockwire_http_request_duration_seconds_bucket'
      && labels.includes('route="/v1/reservations"') && labels.includes('method="POST"')) {
      const le = /le="([^"]+)"/.exec(labels)[1];
      sample.buckets.set(le === '+Inf' ? Infinity : Number(le), number);
    }
  }
  return sample;
}

// The upper bound of the bucket holding the 99th percentile of the requests
// between two scrapes, or null when there were none.
function p99Between(before, now) {
  const bounds = [...now.buckets.keys()].sort((a, b) => a - b);
  const count = (now.buckets.get(Infinity) || 0) - (before.buckets.get(Infinity) || 0);
  if (count <= 0) return null;
  for (const bound of bounds) {
    if ((now.buckets.get(bound) || 0) - (before.buckets.get(bound) || 0) >= 0.99 * count) return bound;
  }
  return null;
}

async function refreshLive() {
  let text;
  try {
    text = await (await request('GET', '/metrics')).text();
  } catch (error) {
    showError('live-error', error);
    return;
  }
  clearError('live-error');
  const now = readMetrics(text);
  const before = state.metrics;
  state.metrics = now;
  if (!before) return;
  const seconds = (now.at - before.at) / 1000;
  const rps = Math.max(0, (now.requests - before.requests) / seconds);
  const events = Math.max(0, (now.events - before.events) / seconds);
  const p99 = p99Between(before, now);
  push('rps', rps);
  push('events', events);
  push('p99', p99 === null || p99 === Infinity ? null : p99 * 1000);
  document.getElementById('live-rps').textContent = rps.toFixed(1);
  document.getElementById('live-events').textContent = events.toFixed(1);
  document.getElementById('live-p99').textContent = p99 === null ? 'no reservations'
    : p99 === Infinity ? 'over the top bucket' : '≤ ' + formatMs(p99 * 1000);
  draw('spark-rps', state.series.rps);
  draw('spark-events', state.series.events);
  draw('spark-p99', state.series.p99);
}

function formatMs(ms) {
  return ms < 1 ? Math.round(ms * 1000) + ' µs' : ms.toFixed(ms < 10 ? 1 : 0) + ' ms';
}

function push(name, value) {
  const series = state.series[name];
  series.push(value);
  if (series.length > SPARK_POINTS) series.shift();
}

function draw(id, series) {
  const svg = document.getElementById(id);
  const max = Math.max(1e-9, ...series.filter((v) => v !== null));
  const points = series.map((v, i) => v === null ? null
    : (i * 120 / (SPARK_POINTS - 1)).toFixed(1) + ',' + (29 - v / max * 27).toFixed(1)).filter(Boolean);
  const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
  line.setAttribute('points', points.join(' '));
  line.setAttribute('fill', 'none');
  line.setAttribute('stroke', 'currentColor');
  line.setAttribute('stroke-width', '1.5');
  line.setAttribute('vector-effect', 'non-scaling-stroke');
  svg.replaceChildren(line);
}

// ---------------------------------------------------------------- wiring

document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('login-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    clearError('login-error');
    const key = document.getElementById('login-key').value.trim();
    try {
      await signIn(key);
    } catch (error) {
      showError('login-error', error.status === 401 ? 'That key was not accepted (401 unauthorized).' : error);
    }
  });
  document.getElementById('sign-out').addEventListener('click', signOut);
  for (const button of document.querySelectorAll('nav button')) {
    button.addEventListener('click', () => showPage(button.dataset.page));
  }
  window.addEventListener('hashchange', () => { if (state.who) showPage(pageFromHash()); });
  document.getElementById('exceptions-filter').addEventListener('submit', (event) => {
    event.preventDefault();
    loadExceptions();
  });
  document.getElementById('exceptions-next').addEventListener('click', () => loadExceptions(state.exceptionsPage.last));
  document.getElementById('exceptions-first').addEventListener('click', () => loadExceptions(0));
  document.getElementById('exception-retry').addEventListener('click', retryException);
  document.getElementById('exception-resolve').addEventListener('click', resolveException);
  document.getElementById('position-form').addEventListener('submit', (event) => {
    event.preventDefault();
    lookUp(event.target.elements.sku.value.trim());
  });
  document.getElementById('reconcile-form').addEventListener('submit', (event) => {
    event.preventDefault();
    reconcile(false);
  });
  document.getElementById('reconcile-apply').addEventListener('click', () => reconcile(true));
  // Apply sends the file that was checked: another file needs its own check first.
  for (const name of ['file', 'source']) {
    document.getElementById('reconcile-form').elements[name].addEventListener('change', () => {
      document.getElementById('reconcile-apply').disabled = true;
      document.getElementById('reconcile-report').hidden = true;
    });
  }
  if (state.key) {
    signIn(state.key).catch((error) => {
      sessionStorage.removeItem(KEY_STORAGE);
      showError('login-error', error);
    });
  } else {
    document.getElementById('login-key').focus();
  }
});
