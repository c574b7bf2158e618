// The load-test runner's HTML report, opened in Debian's headless Chromium:
// a real run (loadtest/scenarios/ci-smoke.toml, a few seconds) against a real
// server writes it; the page must render both charts with data, the verdict,
// and no script or console error. The screenshot goes to TEST_OUTPUT_DIR
// (docs/loadtest-report.png is the same page for a 4,000/s uniform-reserve
// run, taken the same way: see docs/PERFORMANCE.md).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { test } from 'node:test';
import { KEYS, launch, OUTPUT, screenshot, startServer, watchedPage, webhook } from './harness.mjs';

test('the load-test HTML report renders its charts in a real browser', async () => {
  const hook = await webhook();
  const server = await startServer({ hookPort: hook.port });
  const html = join(OUTPUT, 'loadtest-report.html');
  try {
    const scenario = fileURLToPath(new URL('../../loadtest/scenarios/ci-smoke.toml', import.meta.url));
    const run = spawnSync(process.env.LOADTEST_BIN, [scenario, '--target', server.url, '--token', KEYS.admin,
      '--duration', '4', '--quiet', '--html', html], { encoding: 'utf8', timeout: 120_000 });
    assert.equal(run.status, 0, run.stdout + run.stderr);
  } finally {
    await server.stop();
    await hook.close();
  }
  const browser = await launch();
  try {
    const { page, errors } = await watchedPage(browser);
    await page.goto(pathToFileURL(html).href);
    assert.match(await page.textContent('h1'), /ci-smoke: PASS/);
    const charts = await page.$$eval('svg', (svgs) => svgs.map((svg) => ({
      width: svg.getBoundingClientRect().width,
      lines: [...svg.querySelectorAll('polyline')].map((line) => line.points.numberOfItems),
    })));
    assert.equal(charts.length, 2, 'the timeline and the distribution');
    for (const chart of charts) {
      assert.ok(chart.width > 300, 'the chart is laid out');
      assert.ok(chart.lines.length >= 1 && chart.lines.every((points) => points >= 2), JSON.stringify(chart));
    }
    // Every verdict check is listed and passed.
    const checks = await page.$$eval('li', (items) => items.map((li) => li.className));
    assert.ok(checks.length >= 2 && checks.every((c) => c === 'ok'), JSON.stringify(checks));
    await screenshot(page, 'loadtest-report');
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
  }
});
