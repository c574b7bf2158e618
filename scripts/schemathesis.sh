#!/usr/bin/env bash
# Runs schemathesis against a real stockwire on loopback, driven by its own
# /v1/openapi.json: no 5xx, and every answer matches its documented status,
# content type and schema. Bounded: a fixed number of examples per operation
# and a time budget. Usage: scripts/schemathesis.sh [path/to/stockwire]
# (default: the debug binary under $CARGO_TARGET_DIR or ./target).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-${CARGO_TARGET_DIR:-target}/debug/stockwire}"
[ -x "$BIN" ] || { echo "no stockwire binary at $BIN (cargo build first)" >&2; exit 1; }

WORK="$(mktemp -d)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
ADMIN_KEY="schemathesis-admin-secret"
cat > "$WORK/stockwire.toml" <<EOF
listen = "127.0.0.1:$PORT"
data_dir = "$WORK/data"
log_level = "warn"

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
id = "feed"
locations = ["wh-east"]
sink = { kind = "file", dir = "$WORK/feed", format = "csv" }

[[keys]]
name = "schemathesis"
key = "$ADMIN_KEY"
role = "admin"
rate_limit = { per_second = 1000000, burst = 1000000 }
EOF

"$BIN" serve --config "$WORK/stockwire.toml" > "$WORK/server.log" 2>&1 &
SERVER=$!
cleanup() {
  kill "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
for _ in $(seq 1 300); do
  python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/readyz', timeout=1)" 2>/dev/null && break
  sleep 0.1
done

# The event stream never ends by design, so it is left out (its auth and
# framing are tested in tests/integration/{access,sse}.rs).
# One worker: with two, hypothesis's ast.parse from two threads hit CPython
# 3.11.7's "AST constructor recursion depth mismatch" SystemError (a
# thread-safety bug fixed in later CPython releases) once here, failing the
# run with a schemathesis "Runtime Error" that says nothing about the API.
status=0
timeout 900 python3 -m schemathesis.cli run "http://127.0.0.1:$PORT/v1/openapi.json" \
  --header "Authorization: Bearer $ADMIN_KEY" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --exclude-path /v1/events/stream \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-25}" \
  --seed "${SCHEMATHESIS_SEED:-1}" \
  --workers 1 || status=$?
if ! kill -0 "$SERVER" 2>/dev/null; then
  echo "stockwire died during the run:" >&2
  tail -50 "$WORK/server.log" >&2
  status=1
fi
exit "$status"
