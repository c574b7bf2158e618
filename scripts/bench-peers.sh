#!/usr/bin/env bash
# `make bench-peers`: stockwire next to two peers, on the same reservation work,
# in one run and in alternating rounds (stockwire, actix, redis, stockwire, ...):
#
#   stockwire  the release server (`stockwire serve`) with config/stockwire.toml
#              (durability = "wal", its log level, auth on: key dev-admin), a
#              fresh data dir per measurement; POST /v1/reservations, one located
#              line of 1 at wh-east for channel web, after receipts of 10^9 units
#              per SKU so nothing is refused.
#   actix      loadtest's peer-actix: actix-web + a DashMap, the same route and
#              body, no journal, no auth: the HTTP ceiling.
#   redis      Redis 7 (appendonly yes, appendfsync everysec) and a Lua
#              check-and-reserve script (scripts/peers/reserve-redis.lua) run
#              with EVALSHA, driven by redis-benchmark (Redis speaks RESP, not
#              HTTP, so wrk cannot drive it).
#
# Workloads: uniform (a random SKU of 10,000 per request) and hot (one SKU).
# HTTP load: wrk -t2 -c50 with scripts/peers/reserve.lua, which builds the body
# per request and counts only 200/201 answers as throughput; redis-benchmark
# -c 50 --threads 2, its throughput scaled to the reservations actually made.
# A measurement with more than 0.1% refused or failed requests is flagged.
#
# Settings (environment): PEER_SECONDS (measured seconds per run, default 30),
# PEER_ROUNDS (default 2), PEER_WARMUP_SECONDS (default 3, not measured),
# PEER_SERVERS (default "stockwire actix redis"), PEER_WORKLOADS (default
# "uniform hot"): a subset, e.g. to profile one server under load;
# STOCKWIRE_BIN (default ${CARGO_TARGET_DIR:-target}/release/stockwire; when set,
# stockwire is not built), STOCKWIRE_SHARDS (passed to stockwire when set, and
# used as peer-actix's --workers), PEER_KEEP=1 (keep the temp dir with the logs),
# PEER_LINE=sourced (lines without a location) and PEER_KEYED=1 (an
# Idempotency-Key per request): stockwire-only variants, see scripts/peers/reserve.lua.
# Smoke test: PEER_SECONDS=3 PEER_ROUNDS=1 scripts/bench-peers.sh
#
# Everything listens on 127.0.0.1 on free ports; every process started here is
# stopped on exit. The last lines printed are the table of medians and the ratios.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

MEASURE_SECONDS=${PEER_SECONDS:-30}
ROUNDS=${PEER_ROUNDS:-2}
WARMUP_SECONDS=${PEER_WARMUP_SECONDS:-3}
SKUS=10000
CONNECTIONS=50
CLIENT_THREADS=2
TOKEN=dev-admin-secret # config/stockwire.toml's dev-admin: rate limit 10^6/s
STOCK=1000000000
BAD_LIMIT_PCT=0.1
TARGET_DIR=${CARGO_TARGET_DIR:-target}
SW_BIN=${STOCKWIRE_BIN:-$TARGET_DIR/release/stockwire}
ACTIX_BIN=$TARGET_DIR/release/peer-actix
ACTIX_WORKERS=${STOCKWIRE_SHARDS:-$(nproc)}
WRK_LUA=$ROOT/scripts/peers/reserve.lua
REDIS_LUA=$ROOT/scripts/peers/reserve-redis.lua
SW_CONFIG=$ROOT/config/stockwire.toml

die() {
  echo "bench-peers: $*" >&2
  exit 1
}

SERVERS=${PEER_SERVERS:-stockwire actix redis}
WORKLOADS=${PEER_WORKLOADS:-uniform hot}
for server in $SERVERS; do
  [[ $server =~ ^(stockwire|actix|redis)$ ]] || die "PEER_SERVERS: '$server' is not stockwire, actix or redis"
done
for workload in $WORKLOADS; do
  [[ $workload =~ ^(uniform|hot)$ ]] || die "PEER_WORKLOADS: '$workload' is not uniform or hot"
done
[[ ${PEER_LINE:-located} =~ ^(located|sourced)$ ]] || die "PEER_LINE must be located or sourced"
[[ ${PEER_KEYED:-0} =~ ^[01]$ ]] || die "PEER_KEYED must be 0 or 1"
if [[ ${PEER_LINE:-located} != located || ${PEER_KEYED:-0} == 1 ]] && [[ $SERVERS != stockwire ]]; then
  die "PEER_LINE=sourced and PEER_KEYED=1 are stockwire-only: set PEER_SERVERS=stockwire"
fi

for var in MEASURE_SECONDS ROUNDS WARMUP_SECONDS; do
  [[ ${!var} =~ ^[0-9]+$ ]] || die "$var must be a whole number of seconds/rounds, not '${!var}'"
done
((MEASURE_SECONDS >= 1)) || die "PEER_SECONDS must be at least 1"
((ROUNDS >= 1)) || die "PEER_ROUNDS must be at least 1"

# --- tools ----------------------------------------------------------------------
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
for tool in redis-server redis-cli redis-benchmark; do
  command -v "$tool" >/dev/null 2>&1 || { need+=(redis-server) && break; }
done
command -v curl >/dev/null 2>&1 || need+=(curl)
if ((${#need[@]} > 0)); then
  command -v apt-get >/dev/null 2>&1 || die "missing ${need[*]}: install them (Debian: apt-get install redis-server wrk)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${need[@]}"
fi
redis_version=$(redis-server --version | sed -n 's/.* v=\([0-9][0-9.]*\).*/\1/p')
[[ ${redis_version%%.*} -ge 7 ]] 2>/dev/null || echo "bench-peers: warning: redis-server $redis_version, not Redis 7" >&2

# --- build ----------------------------------------------------------------------
# As the Makefile: link Debian's librocksdb when it is there.
if [ -e /usr/include/rocksdb/c.h ]; then
  export ROCKSDB_LIB_DIR=${ROCKSDB_LIB_DIR:-/usr/lib/x86_64-linux-gnu}
  export SNAPPY_LIB_DIR=${SNAPPY_LIB_DIR:-/usr/lib/x86_64-linux-gnu}
  export ROCKSDB_INCLUDE_DIR=${ROCKSDB_INCLUDE_DIR:-/usr/include}
fi
if [ -n "${STOCKWIRE_BIN:-}" ]; then
  cargo build --release -p loadtest --bins
else
  cargo build --release -p stockwire -p loadtest --bins
fi
[ -x "$SW_BIN" ] || die "no stockwire binary at $SW_BIN"
[ -x "$ACTIX_BIN" ] || die "no peer-actix binary at $ACTIX_BIN"

# --- processes --------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-peers.XXXXXX")
RESULTS=$WORK/results.txt
: >"$RESULTS"
PIDS=()

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "${PEER_KEEP:-}" = 1 ]; then
    echo "bench-peers: logs kept in $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
  else
    local port
    while :; do
      port=$((20000 + RANDOM % 40000))
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port" && return; }
    done
  fi
}

# stop PID: SIGTERM, then SIGKILL after 20 s; forgets it.
stop() {
  local pid=$1 i
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < 200; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  forget "$pid"
}

# forget PID: no longer one for the trap to stop.
forget() {
  local kept=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || kept+=("$p"); done
  PIDS=("${kept[@]+"${kept[@]}"}")
}

# show_log LOG: its error lines, or its tail.
show_log() {
  grep -m 5 -E '^Error|ERROR' "$1" >&2 || tail -n 30 "$1" >&2
  echo "(log: $1; PEER_KEEP=1 keeps it after the run)" >&2
}

# wait_ready PID LOG COMMAND...: until COMMAND succeeds (60 s), while PID lives.
wait_ready() {
  local pid=$1 log=$2 i
  shift 2
  for ((i = 0; i < 600; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { show_log "$log" && die "server exited before it was ready"; }
    sleep 0.1
  done
  show_log "$log"
  die "server not ready after 60 s"
}

http_ok() { curl -fsS -o /dev/null --max-time 1 "$1"; }

# --- servers ------------------------------------------------------------------------
# Sets PORT and PID.
start_stockwire() {
  local dir=$1
  mkdir -p "$dir/data"
  PORT=$(free_port)
  # The server refuses STOCKWIRE_* variables that are not config keys (e.g. this
  # script's STOCKWIRE_BIN), and STOCKWIRE_LOG would change the log level: pass
  # only the ones meant for it.
  local clean=() var
  for var in $(compgen -e); do
    [[ $var == STOCKWIRE_* ]] && clean+=(-u "$var")
  done
  local extra=()
  [ -n "${STOCKWIRE_SHARDS:-}" ] && extra+=("STOCKWIRE_SHARDS=$STOCKWIRE_SHARDS")
  # Run in the measurement's dir: the config's relative paths (inbox, feeds) land there.
  (cd "$dir" && exec env "${clean[@]}" STOCKWIRE_DATA_DIR="$dir/data" \
    STOCKWIRE_LISTEN="127.0.0.1:$PORT" "${extra[@]+"${extra[@]}"}" \
    "$SW_BIN" serve --config "$SW_CONFIG") >"$dir/server.log" 2>&1 &
  PID=$!
  PIDS+=("$PID")
  wait_ready "$PID" "$dir/server.log" http_ok "http://127.0.0.1:$PORT/readyz"
}

start_actix() {
  local dir=$1
  mkdir -p "$dir"
  PORT=$(free_port)
  "$ACTIX_BIN" --listen "127.0.0.1:$PORT" --workers "$ACTIX_WORKERS" >"$dir/server.log" 2>&1 &
  PID=$!
  PIDS+=("$PID")
  wait_ready "$PID" "$dir/server.log" http_ok "http://127.0.0.1:$PORT/healthz"
}

start_redis() {
  local dir=$1
  mkdir -p "$dir"
  PORT=$(free_port)
  redis-server --bind 127.0.0.1 --port "$PORT" --dir "$dir" --appendonly yes \
    --appendfsync everysec --save "" --daemonize no --logfile "$dir/server.log" &
  PID=$!
  PIDS+=("$PID")
  wait_ready "$PID" "$dir/server.log" redis-cli -p "$PORT" ping
}

# --- seeds ------------------------------------------------------------------------------
# Receipts of STOCK units for sku-1..sku-SKUS at wh-east, 1000 events a batch;
# every event must be applied.
seed_stockwire() {
  local dir=$1 first last body answer applied
  for ((first = 1; first <= SKUS; first += 1000)); do
    last=$((first + 999 > SKUS ? SKUS : first + 999))
    body=$dir/seed-$first.json
    awk -v first="$first" -v last="$last" -v stock="$STOCK" 'BEGIN {
      printf "{\"events\":["
      for (n = first; n <= last; n++)
        printf "%s{\"event_id\":\"seed-%d\",\"type\":\"receipt\",\"source\":\"bench\",\"sku\":\"sku-%d\",\"location\":\"wh-east\",\"qty\":%d}", (n > first ? "," : ""), n, n, stock
      printf "]}"
    }' >"$body"
    answer=$(curl -fsS --max-time 30 -H "Authorization: Bearer $TOKEN" \
      -H "Content-Type: application/json" --data-binary "@$body" \
      "http://127.0.0.1:$PORT/v1/events") || die "seeding stockwire failed (batch from sku-$first)"
    applied=$(grep -o '"status":"applied"' <<<"$answer" | wc -l)
    ((applied == last - first + 1)) || die "seeding stockwire: $applied of $((last - first + 1)) receipts applied: ${answer:0:300}"
  done
}

# Hashes sku:000000000000..sku:<SKUS-1> (redis-benchmark's __rand_int__ names)
# {on_hand = STOCK, reserved = 0}, by redis-cli --pipe.
seed_redis() {
  local answer
  answer=$(awk -v skus="$SKUS" -v stock="$STOCK" 'BEGIN {
    for (i = 0; i < skus; i++) {
      k = sprintf("sku:%012d", i)
      printf "*6\r\n$4\r\nHSET\r\n$%d\r\n%s\r\n$7\r\non_hand\r\n$%d\r\n%s\r\n$8\r\nreserved\r\n$1\r\n0\r\n", length(k), k, length(stock ""), stock
    }
  }' | redis-cli -p "$PORT" --pipe)
  grep -q "errors: 0, replies: $SKUS" <<<"$answer" || die "seeding redis: $answer"
}

# --- load -------------------------------------------------------------------------------------
# client OUT COMMAND...: runs a load client in the background and waits for it,
# so a signal to this script runs the trap at once (and the trap stops the client).
client() {
  local out=$1 pid rc=0
  shift
  "$@" >"$out" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait "$pid" || rc=$?
  forget "$pid"
  return "$rc"
}

# run_wrk WORKLOAD SECONDS OUT: wrk against PORT; OUT gets wrk's output.
run_wrk() {
  client "$3" env PEER_WORKLOAD="$1" PEER_SKUS="$SKUS" PEER_TOKEN="$TOKEN" \
    PEER_LINE="${PEER_LINE:-located}" PEER_KEYED="${PEER_KEYED:-0}" \
    wrk -t"$CLIENT_THREADS" -c"$CONNECTIONS" -d"${2}s" --latency -s "$WRK_LUA" \
    "http://127.0.0.1:$PORT/v1/reservations" || { cat "$3" >&2; die "wrk failed"; }
  grep -q '^PEER_RESULT ' "$3" || { cat "$3" >&2; die "wrk printed no PEER_RESULT line"; }
}

# field NAME FILE: NAME=value from the PEER_RESULT line.
field() { sed -n "s/^PEER_RESULT .*\\b$1=\\([^ ]*\\).*/\\1/p" "$2"; }

# stockwire_reservations: reservations the server at PORT says it created
# (stockwire_reservations_total{outcome="created"}, over channels).
stockwire_reservations() {
  curl -fsS --max-time 5 "http://127.0.0.1:$PORT/metrics" |
    awk '/^stockwire_reservations_total[{]/ && /outcome="created"/ { sum += $NF } END { printf "%d\n", sum }'
}

# proc_sample PID: "TICKS SWITCHES", the server's CPU time so far (user +
# system, clock ticks) and context switches (voluntary + involuntary, over
# its threads), from /proc.
proc_sample() {
  local ticks switches
  ticks=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat")
  switches=$(cat /proc/"$1"/task/*/status 2>/dev/null |
    awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ { s += $2 } END { print s + 0 }')
  echo "$ticks $switches"
}

# cost BEFORE AFTER REQUESTS: sets COST to "CPU_US SWITCHES", the server's CPU
# microseconds and context switches per request between the two samples.
CLK_TCK=$(getconf CLK_TCK)
cost() {
  COST=$(awk -v b="$1" -v a="$2" -v n="$3" -v hz="$CLK_TCK" 'BEGIN {
    split(b, x, " "); split(a, y, " ");
    if (n > 0) printf "%.1f %.2f", (y[1] - x[1]) * 1e6 / hz / n, (y[2] - x[2]) / n; else print "nan nan" }')
}

# record SERVER WORKLOAD ROUND RPS P50_MS P99_MS OK BAD NOTE (and COST)
record() {
  local pct flag=""
  pct=$(awk -v ok="$7" -v bad="$8" 'BEGIN { t = ok + bad; printf "%.3f", (t > 0 ? 100 * bad / t : 100) }')
  awk -v p="$pct" -v limit="$BAD_LIMIT_PCT" 'BEGIN { exit !(p > limit) }' && flag=" FLAGGED: over ${BAD_LIMIT_PCT}% not reserved"
  echo "$1 $2 $3 $4 $5 $6 $pct ${COST:-nan nan}" >>"$RESULTS"
  printf '  round %d %-8s %-9s %10.1f reservations/s  p50 %7.3f ms  p99 %7.3f ms  ok %d  refused/failed %d (%s%%)%s  server %s µs CPU, %s context switches per request%s\n' \
    "$3" "$2" "$1" "$4" "$5" "$6" "$7" "$8" "$pct" "${9:+  $9}" "${COST%% *}" "${COST##* }" "$flag"
}

measure_http() {
  local server=$1 workload=$2 round=$3 dir=$WORK/r$3-$2-$1
  mkdir -p "$dir"
  if [ "$server" = stockwire ]; then
    start_stockwire "$dir"
    seed_stockwire "$dir"
  else
    start_actix "$dir"
  fi
  local warm_ok=0
  if ((WARMUP_SECONDS > 0)); then
    run_wrk "$workload" "$WARMUP_SECONDS" "$dir/warmup.txt"
    warm_ok=$(field ok "$dir/warmup.txt")
  fi
  local sampled
  sampled=$(proc_sample "$PID")
  run_wrk "$workload" "$MEASURE_SECONDS" "$dir/wrk.txt"
  local ok non2xx errors rps p50 p99 note=""
  ok=$(field ok "$dir/wrk.txt")
  non2xx=$(field non2xx "$dir/wrk.txt")
  cost "$sampled" "$(proc_sample "$PID")" "$((ok + non2xx))"
  errors=$(field socket_errors "$dir/wrk.txt")
  rps=$(field rps "$dir/wrk.txt")
  p50=$(awk -v us="$(field p50_us "$dir/wrk.txt")" 'BEGIN { printf "%.3f", us / 1000 }')
  p99=$(awk -v us="$(field p99_us "$dir/wrk.txt")" 'BEGIN { printf "%.3f", us / 1000 }')
  ((ok > 0)) || { cat "$dir/wrk.txt" >&2; show_log "$dir/server.log"; die "$server answered no 2xx"; }
  [ "$(field statuses "$dir/wrk.txt")" = - ] || note="statuses $(field statuses "$dir/wrk.txt")"
  ((errors == 0)) || note="$note socket errors $errors"
  if [ "$server" = stockwire ]; then
    # Cross-check: the server created as many reservations as wrk saw 2xx, give
    # or take the requests in flight when each wrk run stopped (at most one per
    # connection and run: wrk drops the answers that come after its deadline).
    local counted seen slack verdict=consistent
    counted=$(stockwire_reservations)
    seen=$((warm_ok + ok))
    slack=$((CONNECTIONS * (WARMUP_SECONDS > 0 ? 2 : 1)))
    ((counted >= seen && counted - seen <= slack)) || verdict="MISMATCH"
    note="${note:+$note, }server created $counted, wrk saw $seen 2xx: $verdict"
  fi
  stop "$PID"
  record "$server" "$workload" "$round" "$rps" "$p50" "$p99" "$ok" "$((non2xx + errors))" "$note"
}

# Requests/s of the last redis-benchmark run per workload: sizes the next run's -n.
declare -A REDIS_RATE=([uniform]=20000 [hot]=20000)

# run_redis_benchmark WORKLOAD N SHA OUT
run_redis_benchmark() {
  local args=()
  if [ "$1" = uniform ]; then
    args=(-r "$SKUS" EVALSHA "$3" 1 "sku:__rand_int__" 1 3600)
  else
    args=(EVALSHA "$3" 1 sku:000000000001 1 3600)
  fi
  client "$4" redis-benchmark -h 127.0.0.1 -p "$PORT" -c "$CONNECTIONS" \
    --threads "$CLIENT_THREADS" -n "$2" --csv "${args[@]}" || { cat "$4" >&2; die "redis-benchmark failed"; }
}

measure_redis() {
  local workload=$1 round=$2 dir=$WORK/r$2-$1-redis
  mkdir -p "$dir"
  start_redis "$dir"
  seed_redis
  local sha
  sha=$(redis-cli -p "$PORT" SCRIPT LOAD "$(cat "$REDIS_LUA")")
  [[ $sha =~ ^[0-9a-f]{40}$ ]] || die "SCRIPT LOAD: $sha"
  # redis-benchmark runs a number of requests, not a time: the warm-up also
  # measures the rate that sizes the measured run to about PEER_SECONDS.
  if ((WARMUP_SECONDS > 0)); then
    local n=$((REDIS_RATE[$workload] * WARMUP_SECONDS)) start end
    start=$(date +%s.%N)
    run_redis_benchmark "$workload" "$n" "$sha" "$dir/warmup.csv"
    end=$(date +%s.%N)
    REDIS_RATE[$workload]=$(awk -v n="$n" -v s="$start" -v e="$end" 'BEGIN { printf "%d", n / (e - s) }')
  fi
  local n=$((REDIS_RATE[$workload] * MEASURE_SECONDS))
  ((n >= 1000)) || n=1000
  local before after made start end seconds line rps p50 p99
  before=$(redis-cli -p "$PORT" GET resv:seq)
  local sampled
  sampled=$(proc_sample "$PID")
  start=$(date +%s.%N)
  run_redis_benchmark "$workload" "$n" "$sha" "$dir/bench.csv"
  end=$(date +%s.%N)
  cost "$sampled" "$(proc_sample "$PID")" "$n"
  after=$(redis-cli -p "$PORT" GET resv:seq)
  made=$((${after:-0} - ${before:-0}))
  seconds=$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.1f", e - s }')
  REDIS_RATE[$workload]=$(awk -v n="$n" -v s="$start" -v e="$end" 'BEGIN { printf "%d", n / (e - s) }')
  line=$(grep -m1 '^"EVALSHA' "$dir/bench.csv") || { cat "$dir/bench.csv" >&2; die "redis-benchmark printed no result row"; }
  # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
  rps=$(awk -F'","' -v made="$made" -v n="$n" '{ printf "%.1f", $2 * made / n }' <<<"$line")
  p50=$(awk -F'","' '{ printf "%.3f", $5 }' <<<"$line")
  p99=$(awk -F'","' '{ printf "%.3f", $7 }' <<<"$line")
  stop "$PID"
  local short=""
  awk -v s="$seconds" -v want="$MEASURE_SECONDS" 'BEGIN { exit !(s < 0.8 * want) }' &&
    short=" (short of ${MEASURE_SECONDS} s: sized from the warm-up's rate)"
  record redis "$workload" "$round" "$rps" "$p50" "$p99" "$made" "$((n - made))" \
    "redis-benchmark, $n requests in ${seconds} s$short"
}

echo "bench-peers: $ROUNDS round(s) of ${MEASURE_SECONDS} s per server and workload (+${WARMUP_SECONDS} s warm-up), $CONNECTIONS connections"
echo "bench-peers: stockwire $SW_BIN (config $SW_CONFIG${STOCKWIRE_SHARDS:+, STOCKWIRE_SHARDS=$STOCKWIRE_SHARDS}), peer-actix --workers $ACTIX_WORKERS, redis-server $redis_version"
for ((round = 1; round <= ROUNDS; round++)); do
  for workload in $WORKLOADS; do
    for server in $SERVERS; do
      if [ "$server" = redis ]; then
        measure_redis "$workload" "$round"
      else
        measure_http "$server" "$workload" "$round"
      fi
    done
  done
done

# --- summary ---------------------------------------------------------------------------------
# median SERVER WORKLOAD COLUMN (4 = rps, 5 = p50, 6 = p99, 8 = CPU µs and
# 9 = context switches per request).
median() {
  awk -v s="$1" -v w="$2" -v c="$3" '$1 == s && $2 == w { print $c }' "$RESULTS" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
flagged() {
  awk -v s="$1" -v w="$2" -v limit="$BAD_LIMIT_PCT" '$1 == s && $2 == w { n++; if ($7 > limit) f++ }
    END { if (f) printf "FLAGGED %d/%d rounds >%s%% not reserved", f, n, limit; else print "-" }' "$RESULTS"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "nan" }'; }

echo
echo "Medians over $ROUNDS round(s) of ${MEASURE_SECONDS} s; req/s counts only reservations made (HTTP 200/201; Redis: scripts that reserved)."
echo "redis is driven by redis-benchmark -c $CONNECTIONS --threads $CLIENT_THREADS (RESP), not wrk -t$CLIENT_THREADS -c $CONNECTIONS (HTTP): its latency excludes HTTP."
echo "cpu_us/req and cs/req: the server process's CPU time and context switches per request (/proc)."
printf '%-10s %-8s %12s %9s %9s %11s %7s  %s\n' server workload req/s p50_ms p99_ms cpu_us/req cs/req flags
for workload in $WORKLOADS; do
  for server in $SERVERS; do
    printf '%-10s %-8s %12.1f %9.3f %9.3f %11.1f %7.2f  %s\n' "$server" "$workload" \
      "$(median "$server" "$workload" 4)" "$(median "$server" "$workload" 5)" \
      "$(median "$server" "$workload" 6)" "$(median "$server" "$workload" 8)" \
      "$(median "$server" "$workload" 9)" "$(flagged "$server" "$workload")"
  done
done
sw_u=$(median stockwire uniform 4)
sw_h=$(median stockwire hot 4)
printf '%-24s %s\n' "stockwire/actix uniform" "$(ratio "$sw_u" "$(median actix uniform 4)")"
printf '%-24s %s\n' "stockwire/actix hot" "$(ratio "$sw_h" "$(median actix hot 4)")"
printf '%-24s %s\n' "stockwire hot/uniform" "$(ratio "$sw_h" "$sw_u")"
printf '%-24s %s\n' "stockwire/redis uniform" "$(ratio "$sw_u" "$(median redis uniform 4)")"
printf '%-24s %s\n' "stockwire/redis hot" "$(ratio "$sw_h" "$(median redis hot 4)")"
