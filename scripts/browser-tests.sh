#!/usr/bin/env bash
# The browser tests (part of `make test`): Debian's headless Chromium, driven
# by playwright-core (tests/browser/package-lock.json), against a real
# stockwire: the operations console (tests/browser/console.test.mjs) and the
# load-test runner's HTML report (report.test.mjs). Screenshots and server
# logs go to $TEST_OUTPUT_DIR (default $CARGO_TARGET_DIR/test-output/browser).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
# playwright-core 1.64 needs Node.js 20; node --test's flags used here, 20.11.
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 11) ? 0 : 1)' 2>/dev/null; then
  echo "browser tests need Node.js 20.11 or newer (this machine kind has it; Debian 12's nodejs is 18); found: $(node --version 2>&1)" >&2
  exit 1
fi
# The features `cargo test` builds with (test-support): the same binary, no rebuild.
cargo build --quiet --bin stockwire --features test-support
cargo build --quiet -p loadtest --bin loadtest
export STOCKWIRE_BIN="$target/debug/stockwire" LOADTEST_BIN="$target/debug/loadtest"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
export TEST_OUTPUT_DIR="${TEST_OUTPUT_DIR:-$target/test-output/browser}"
rm -rf "$TEST_OUTPUT_DIR"
mkdir -p "$TEST_OUTPUT_DIR"
cd tests/browser
npm ci --no-audit --no-fund --loglevel=error
npm test
echo "browser tests: screenshots in $TEST_OUTPUT_DIR"
