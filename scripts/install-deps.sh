#!/usr/bin/env bash
# Installs the native libraries stockwire links against when they are missing,
# and with --test also promtool (Debian's prometheus package), which the tests
# use to check the metrics exposition and the alert rules, schemathesis
# (PyPI), which scripts/schemathesis.sh runs against /v1/openapi.json, and what
# the docs' commands use (jq, curl, redis-server, wrk; scripts/doc-commands.py),
# Chromium for the browser tests (scripts/browser-tests.sh; they bring
# playwright-core from npm and need the machine's Node.js 20+), and
# nats-server for the nats sink's tests (tests/integration/nats.rs).
# Debian/Ubuntu only; other platforms build the bundled RocksDB (see README).
set -euo pipefail
SCHEMATHESIS_VERSION=4.32.5
need=()
if [ "${1:-}" = "--test" ]; then
  command -v promtool >/dev/null 2>&1 || need+=(prometheus)
  # scripts/doc-commands.py runs the docs' examples: jq picks fields out of
  # answers, and docs/PERFORMANCE.md's bench-peers smoke needs redis and wrk.
  command -v jq >/dev/null 2>&1 || need+=(jq)
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  command -v wrk >/dev/null 2>&1 || need+=(wrk)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
  # The TLS test's CA and server certificate.
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  [ -x /usr/bin/chromium ] || need+=(chromium)
  # Chromium's recommended fonts (skipped by --no-install-recommends): text in
  # the browser tests' screenshots.
  [ -d /usr/share/fonts/truetype/liberation ] || need+=(fonts-liberation)
  command -v node >/dev/null 2>&1 || need+=(nodejs npm)
  if ! python3 -m schemathesis.cli --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    python3 -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
  fi
fi
[ -e /usr/include/rocksdb/c.h ] || need+=(librocksdb-dev)
# bindgen needs libclang itself (libclang.so / libclang-N.so), not libclang-cpp.
compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null \
  || compgen -G "/usr/lib/llvm-*/lib/libclang-[0-9]*.so*" >/dev/null \
  || need+=(libclang-dev)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "missing ${need[*]}: install them, or build the bundled RocksDB with plain 'cargo build'" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
