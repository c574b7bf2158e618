// What the browser tests share: a real stockwire (the binary in STOCKWIRE_BIN)
// on a free loopback port with its own temp data dir, a webhook receiver the
// test can make fail, Debian's Chromium driven by playwright-core, and a
// folder for screenshots (TEST_OUTPUT_DIR). Started by scripts/browser-tests.sh.
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const OUTPUT = process.env.TEST_OUTPUT_DIR || join(process.cwd(), 'output');
mkdirSync(OUTPUT, { recursive: true });

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(name + ' is not set: run scripts/browser-tests.sh');
  return value;
}

export const KEYS = {
  admin: 'console-admin-secret',
  observer: 'console-observer-secret',
  system: 'console-system-secret',
  slow: 'console-slow-secret',
};

/** A free loopback port (the OS picks, the listener closes). */
export async function freePort() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * A webhook receiver on loopback: answers 200 while `healthy`, 500 otherwise,
 * and counts the POSTs it got.
 */
export async function webhook() {
  const hook = { healthy: true, received: 0, port: 0 };
  const server = createServer((request, response) => {
    request.resume();
    request.on('end', () => {
      hook.received += 1;
      response.statusCode = hook.healthy ? 200 : 500;
      response.end(hook.healthy ? 'ok' : 'receiver failing on purpose');
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  hook.port = server.address().port;
  hook.close = () => new Promise((resolve) => server.close(resolve));
  return hook;
}

/** Starts stockwire with the test config; resolves once /readyz answers 200. */
export async function startServer({ hookPort, top = '' } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'stockwire-browser-'));
  const port = await freePort();
  const config = `listen = "127.0.0.1:${port}"
data_dir = "${join(dir, 'data')}"
${top}

[[locations]]
id = "wh-east"
kind = "warehouse"

[[locations]]
id = "wh-west"
kind = "warehouse"

[[channels]]
id = "web"
locations = ["wh-east", "wh-west"]

[[channels]]
id = "hook"
locations = ["wh-east"]
coalesce_ms = 0
sink = { kind = "webhook", url = "http://127.0.0.1:${hookPort}/stock", timeout_ms = 500, max_attempts = 3, backoff_ms = 50, backoff_max_ms = 200 }

# The WMS (and the load-test runner) post every event type; the ERP is authoritative for on-hand, so a
# reconciliation from it may correct differences.
[[source_authority]]
source = "wms"

[[source_authority]]
source = "loadtest"

[[source_authority]]
source = "erp"
types = ["count", "adjustment"]

[[keys]]
name = "ops-admin"
key = "${KEYS.admin}"
role = "admin"
rate_limit = { per_second = 100000, burst = 100000 }

[[keys]]
name = "ops-observer"
key = "${KEYS.observer}"
role = "observer"

[[keys]]
name = "erp"
key = "${KEYS.system}"
role = "system"
locations = ["wh-east", "wh-west"]

[[keys]]
name = "slow"
key = "${KEYS.slow}"
role = "observer"
rate_limit = { per_second = 1, burst = 2 }
`;
  const configPath = join(dir, 'stockwire.toml');
  writeFileSync(configPath, config);
  const log = openSync(join(OUTPUT, `stockwire-${port}.log`), 'w');
  // The server refuses STOCKWIRE_* variables it does not know: pass none of ours.
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('STOCKWIRE_')));
  env.STOCKWIRE_LOG = 'warn';
  const child = spawn(required('STOCKWIRE_BIN'), ['serve', '--config', configPath], {
    stdio: ['ignore', log, log],
    env,
  });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error('stockwire exited with ' + child.exitCode + ' (log in ' + OUTPUT + ')');
    try {
      if ((await fetch(url + '/readyz')).ok) break;
    } catch (_) {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error('stockwire not ready in 60 s');
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return {
    url,
    port,
    async stop() {
      child.kill('SIGTERM');
      await new Promise((resolve) => (child.exitCode !== null ? resolve() : child.on('exit', resolve)));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** One API call with a key; resolves to {status, body}. */
export async function api(server, method, path, body, key = KEYS.admin) {
  const response = await fetch(server.url + path, {
    method,
    headers: { Authorization: 'Bearer ' + key, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch (_) {
    // not JSON
  }
  return { status: response.status, body: parsed };
}

/** Debian's Chromium, headless, with nothing reaching outside the machine. */
export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/**
 * A page that records every script error and console error, so a test can
 * assert there were none.
 */
export async function watchedPage(browser) {
  const context = await browser.newContext({ viewport: { width: 1366, height: 850 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push('page error: ' + error.message));
  page.on('console', (message) => {
    // A refused call (401, 403, 429 ...) is logged by Chromium as a failed load;
    // the console shows those itself. Anything else is a script problem.
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource: the server responded')) {
      errors.push('console error: ' + message.text());
    }
  });
  return { page, errors, context };
}

export async function screenshot(page, name) {
  const path = join(OUTPUT, name + '.png');
  await page.screenshot({ path, fullPage: true });
  return path;
}
