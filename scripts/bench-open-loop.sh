#!/usr/bin/env bash
# `make bench-open-loop`: open-loop latency of stockwire next to loadtest's
# peer-actix (actix-web + DashMap, in memory, no journal: the HTTP ceiling), on
# the same reservation, at fixed offered rates, driven by oha with ONE client
# thread (tokio, epoll) and coordinated-omission correction (latency from each
# request's scheduled send time). The loadtest runner is a thread per
# connection; this shows what the client's threads do and do not explain.
#
#   stockwire  release server, config/stockwire.toml (durability = "wal",
#              log_level = "info", auth on: key dev-admin), fresh data dir per
#              measurement, one SKU with 10^8 units at wh-east (a hot SKU: oha
#              sends one fixed body), POST /v1/reservations, one located line of 1.
#   actix      peer-actix --workers $(nproc), the same route and body.
#
# Settings: OPEN_RATES (default "2000 5000 10000 20000"), OPEN_SECONDS (15),
# OPEN_ROUNDS (1), STOCKWIRE_BIN (default: build the release server), OHA (the
# oha binary; default: on PATH, else `cargo install --locked oha@1.16.0` into
# ~/.cache/stockwire-tools, several minutes once). Loopback only; every process
# started here is stopped on exit. The last lines are the table of medians.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
RATES=${OPEN_RATES:-2000 5000 10000 20000}
SECONDS_EACH=${OPEN_SECONDS:-15}
ROUNDS=${OPEN_ROUNDS:-1}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
TOKEN=dev-admin-secret
BODY='{"channel":"web","lines":[{"sku":"hot-1","location":"wh-east","qty":1}],"ttl_seconds":3600}'

die() {
  echo "bench-open-loop: $*" >&2
  exit 1
}

OHA_BIN=${OHA:-$(command -v oha || true)}
if [ -z "$OHA_BIN" ]; then
  OHA_BIN=$HOME/.cache/stockwire-tools/bin/oha
  if [ ! -x "$OHA_BIN" ]; then
    echo "bench-open-loop: installing oha 1.16.0 (once)" >&2
    cargo install --quiet --locked oha@1.16.0 --root "$HOME/.cache/stockwire-tools"
  fi
fi
command -v python3 >/dev/null || die "python3 is needed to read oha's JSON"
if [ -z "${STOCKWIRE_BIN:-}" ]; then
  cargo build --quiet --release --bin stockwire
  SW_BIN=$TARGET_DIR/release/stockwire
else
  SW_BIN=$STOCKWIRE_BIN
fi
cargo build --quiet --release -p loadtest --bin peer-actix
ACTIX_BIN=$TARGET_DIR/release/peer-actix

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-open-loop.XXXXXX")
PID=""
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_ready() {
  for _ in $(seq 300); do
    curl -sf "$1" >/dev/null && return 0
    kill -0 "$PID" 2>/dev/null || die "the server exited (log in $WORK)"
    sleep 0.1
  done
  die "not ready: $1"
}

# run SERVER RATE: one measurement; appends "SERVER RATE p50 p90 p99 p99.9 max rps" to results.
run() {
  local server=$1 rate=$2 port connections out
  port=$(free_port)
  connections=$((rate / 1250))
  ((connections < 8)) && connections=8
  if [ "$server" = stockwire ]; then
    rm -rf "$WORK/data"
    # The server refuses STOCKWIRE_* variables it does not know (STOCKWIRE_BIN).
    env -u STOCKWIRE_BIN STOCKWIRE_LISTEN=127.0.0.1:$port STOCKWIRE_DATA_DIR=$WORK/data \
      "$SW_BIN" serve --config "$ROOT/config/stockwire.toml" >"$WORK/stockwire.log" 2>&1 &
    PID=$!
    wait_ready "http://127.0.0.1:$port/readyz"
    curl -sSf "http://127.0.0.1:$port/v1/events" -H "Authorization: Bearer $TOKEN" \
      -H 'content-type: application/json' \
      -d '{"events":[{"event_id":"open-loop-seed","type":"receipt","source":"bench","sku":"hot-1","location":"wh-east","qty":100000000}]}' \
      >/dev/null || die "seeding failed"
  else
    "$ACTIX_BIN" --listen "127.0.0.1:$port" --workers "$(nproc)" >"$WORK/actix.log" 2>&1 &
    PID=$!
    wait_ready "http://127.0.0.1:$port/healthz"
  fi
  out=$WORK/$server-$rate.json
  "$OHA_BIN" --no-tui --latency-correction --worker-threads 1 -z "${SECONDS_EACH}s" \
    -c "$connections" -q "$rate" -m POST -H "Authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' -d "$BODY" --output-format json \
    "http://127.0.0.1:$port/v1/reservations" >"$out"
  kill "$PID"
  wait "$PID" 2>/dev/null || true
  PID=""
  python3 - "$server" "$rate" "$connections" "$out" <<'PY' | tee -a "$WORK/results.txt"
import json, sys
server, rate, connections, path = sys.argv[1:]
d = json.load(open(path))
s, p = d["summary"], d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
ok = codes.get("201", 0) + codes.get("200", 0)
total = sum(codes.values()) or 1
ms = lambda v: v * 1000
print(f"{server} {rate} {connections} {ms(p['p50']):.3f} {ms(p['p90']):.3f} {ms(p['p99']):.3f} "
      f"{ms(p['p99.9']):.3f} {ms(s['slowest']):.2f} {s['requestsPerSec']:.0f} {100 * (total - ok) / total:.2f}")
PY
}

echo "bench-open-loop: oha $("$OHA_BIN" --version | awk '{print $2}') (1 thread), rates $RATES, ${SECONDS_EACH}s each, $ROUNDS round(s)"
echo "server rate connections p50_ms p90_ms p99_ms p99.9_ms max_ms rps refused_pct"
for round in $(seq "$ROUNDS"); do
  for rate in $RATES; do
    run actix "$rate"
    run stockwire "$rate"
  done
done
echo
echo "medians over $ROUNDS round(s), open loop, one oha thread, hot SKU:"
python3 - "$WORK/results.txt" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    server, rate, _, p50, p90, p99, p999, mx, rps, bad = line.split()
    rows.setdefault((int(rate), server), []).append((float(p50), float(p99), float(p999), float(bad)))
print(f"{'rate/s':>8} {'server':>10} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'refused %':>9}")
for (rate, server) in sorted(rows):
    v = rows[(rate, server)]
    med = lambda i: statistics.median(x[i] for x in v)
    print(f"{rate:>8} {server:>10} {med(0):>8.3f} {med(1):>8.3f} {med(2):>9.3f} {med(3):>9.2f}")
PY
