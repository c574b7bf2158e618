#!/usr/bin/env bash
# `make bench-cluster`: what cluster mode adds, at the same offered load, side by
# side in one run (docs/PERFORMANCE.md, "Cluster mode").
#
#   single       one node without [cluster] (RocksDB only)
#   cluster-N    N = 1, 2, 3 nodes in cluster mode on a 3-server NATS cluster (R3
#                journal stream); the load goes to the owner
#   forwarded    3 nodes; the load goes to a follower, which forwards to the owner
#   groups-2     partition groups ([cluster] groups = 2): two "machines", each with
#                a process per group (4 processes), each machine owning one group;
#                half the load (a SKU of group 0) goes to group 0's owner, half (a
#                SKU of group 1) to group 1's, by two load generators at RATE/2
#   groups-2-fwd the same 4 processes; all the load goes to group 0's owner, half of
#                it (group 1's SKU) forwarded by it to group 1's owner
#   single-cart  one node without [cluster]; the carts of groups-2-cart, at RATE/2
#   groups-2-cart the same 4 processes; carts of two lines, one in each group, at
#                RATE/2 to group 0's owner, which holds its part and has group 1's
#                owner hold the other, each on its lease (each part settles with
#                the other at the lease's end)
#
# In the groups setups "owner" is the mean over the two owners of the CPU each used
# per reservation it decided (its group's 201s), and p50/p99 the worse of the two
# load generators'.
#
# CPU columns (µs per reservation): the owner; a follower that only follows (mean);
# the follower the load went to (forwarded only); the three nats-servers together.
#
# Each: the release server on config/stockwire.toml (durability = "wal",
# log_level = "info", auth on), fresh data dirs and a fresh stream, one SKU with
# 10^8 units, POST /v1/reservations (one located line of 1) at a fixed rate, open
# loop, by oha with one client thread and coordinated-omission correction. CPU per
# reservation of each process kind: its utime+stime over the run (/proc) divided by
# the reservations answered 201.
#
# CLUSTER_CART_LEASE_SECONDS sets the groups' cart_lease_seconds (30 by default),
# so a cart's parts settle at their lease's end inside a short run.
# Settings: CLUSTER_RATE (default 2000), CLUSTER_SECONDS (15), CLUSTER_ROUNDS (1),
# CLUSTER_SETUPS (default "single cluster-1 cluster-2 cluster-3 forwarded"),
# STOCKWIRE_BIN (default: build the release server), OHA (as bench-open-loop.sh).
# Loopback only; everything started here is stopped on exit. The last lines are the
# table of medians.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
RATE=${CLUSTER_RATE:-2000}
SECONDS_EACH=${CLUSTER_SECONDS:-15}
ROUNDS=${CLUSTER_ROUNDS:-1}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
TOKEN=dev-admin-secret
BODY='{"channel":"web","lines":[{"sku":"hot-1","location":"wh-east","qty":1}],"ttl_seconds":3600}'
CART_BODY='{"channel":"web","lines":[{"sku":"hot-1","location":"wh-east","qty":1},{"sku":"hot-2","location":"wh-east","qty":1}],"ttl_seconds":3600}'
NATS_BASE=${CLUSTER_NATS_BASE:-27222}
HTTP_BASE=${CLUSTER_HTTP_BASE:-19181}

die() {
  echo "bench-cluster: $*" >&2
  exit 1
}

OHA_BIN=${OHA:-$(command -v oha || true)}
if [ -z "$OHA_BIN" ]; then
  OHA_BIN=$HOME/.cache/stockwire-tools/bin/oha
  if [ ! -x "$OHA_BIN" ]; then
    echo "bench-cluster: installing oha 1.16.0 (once)" >&2
    cargo install --quiet --locked oha@1.16.0 --root "$HOME/.cache/stockwire-tools"
  fi
fi
if [ -z "${STOCKWIRE_BIN:-}" ]; then
  cargo build --quiet --release --bin stockwire
  SW_BIN=$TARGET_DIR/release/stockwire
else
  SW_BIN=$STOCKWIRE_BIN
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-cluster.XXXXXX")
PIDS=()
stop_nodes() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
cleanup() {
  stop_nodes
  "$ROOT/scripts/nats-cluster.sh" stop "$WORK/nats" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

NATS_URLS=$("$ROOT/scripts/nats-cluster.sh" start "$WORK/nats" "$NATS_BASE")

# cpu PID: utime+stime of PID in clock ticks.
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
nats_pids() { cat "$WORK/nats"/n*.pid; }

# start_node I CLUSTERED STREAM [GROUP MACHINE]: node I in the background; its pid
# in PIDS. With GROUP, a member of partition group GROUP of 2, node id MACHINE.
start_node() {
  local i=$1 clustered=$2 stream=$3 group=${4:-} machine=${5:-n$1}
  local port=$((HTTP_BASE + i - 1)) config=$WORK/n$i.toml
  rm -rf "$WORK/n$i"
  grep -v -E '^(listen|data_dir)[[:space:]]*=' "$ROOT/config/stockwire.toml" >"$WORK/body.toml"
  {
    echo "listen = \"127.0.0.1:$port\""
    echo "data_dir = \"$WORK/n$i/data\""
    cat "$WORK/body.toml"
    if [ "$clustered" = yes ]; then
      printf '\n[cluster]\nnode = "%s"\nurl = "%s"\nstream = "%s"\nadvertise = "http://127.0.0.1:%s"\n' \
        "$machine" "$NATS_URLS" "$stream" "$port"
      if [ -n "$group" ]; then printf 'groups = 2\ngroup = %s\n' "$group"; fi
      if [ -n "$group" ] && [ -n "${CLUSTER_CART_LEASE_SECONDS:-}" ]; then
        printf 'cart_lease_seconds = %s\n' "$CLUSTER_CART_LEASE_SECONDS"
      fi
    fi
  } >"$config"
  env -u STOCKWIRE_BIN "$SW_BIN" serve --config "$config" >"$WORK/n$i.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return 0
    sleep 0.1
  done
  die "node $i not ready (log in $WORK/n$i.log)"
}

# run NAME NODES CLUSTERED TARGET_NODE: one measurement, one line in results.
run() {
  local name=$1 nodes=$2 clustered=$3 target=$4 stream="BENCH$RANDOM$RANDOM" i out
  for i in $(seq "$nodes"); do start_node "$i" "$clustered" "$stream"; done
  local port=$((HTTP_BASE + target - 1))
  curl -sSf "http://127.0.0.1:$HTTP_BASE/v1/events" -H "Authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' \
    -d '{"events":[{"event_id":"cluster-seed","type":"receipt","source":"bench","sku":"hot-1","location":"wh-east","qty":100000000},
                   {"event_id":"cluster-seed-2","type":"receipt","source":"bench","sku":"hot-2","location":"wh-east","qty":100000000}]}' \
    >/dev/null || die "seeding failed"
  sleep 1
  local before=() nats_before=0 pid
  for pid in "${PIDS[@]}"; do before+=("$(cpu "$pid")"); done
  for pid in $(nats_pids); do nats_before=$((nats_before + $(cpu "$pid"))); done
  out=$WORK/$name.json
  "$OHA_BIN" --no-tui --latency-correction --worker-threads 1 -z "${SECONDS_EACH}s" \
    -c 8 -q "${RUN_RATE:-$RATE}" -m POST -H "Authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' -d "$BODY" --output-format json \
    "http://127.0.0.1:$port/v1/reservations" >"$out"
  local after=() nats_after=0
  for pid in "${PIDS[@]}"; do after+=("$(cpu "$pid")"); done
  for pid in $(nats_pids); do nats_after=$((nats_after + $(cpu "$pid"))); done
  # Per node: ticks used; the owner is n1 (it started first), the target is named.
  local ticks=""
  for i in $(seq 0 $((nodes - 1))); do ticks+="$(( ${after[$i]} - ${before[$i]} )),"; done
  # Appends per journal commit on the owner (per stream message in cluster mode).
  local batch
  batch=$(curl -s "http://127.0.0.1:$HTTP_BASE/metrics" | awk '
    /^stockwire_journal_appends_total / {a=$2} /^stockwire_journal_commits_total / {c=$2}
    END {if (c > 0) printf "%.2f", a / c; else print "0"}')
  stop_nodes
  python3 - "$name" "$out" "$ticks" "$((nats_after - nats_before))" "$(getconf CLK_TCK)" "$target" "$batch" <<'PY' | tee -a "$WORK/results.txt"
import json, sys
name, path, ticks, nats, hz, target, batch = sys.argv[1:]
d = json.load(open(path))
s, p = d["summary"], d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
ok = codes.get("201", 0) or 1
us = lambda t: int(t) / int(hz) * 1e6 / ok
nodes = [us(t) for t in ticks.strip(",").split(",")]
t = int(target) - 1
owner = nodes[0]
forwarder = nodes[t] if t != 0 else 0.0
followers = [n for i, n in enumerate(nodes) if i not in (0, t)]
follower = sum(followers) / len(followers) if followers else 0.0
print(f"{name} {p['p50']*1000:.3f} {p['p99']*1000:.3f} {s['requestsPerSec']:.0f} {ok} "
      f"{owner:.1f} {follower:.1f} {forwarder:.1f} {us(nats):.1f} {sum(nodes) + us(nats):.1f} {batch}")
PY
}

# load OUT PORT SKU RATE: one open-loop load generator; with SKU "cart", carts of
# hot-1 (group 0) and hot-2 (group 1).
load() {
  local lines="{\"sku\":\"$3\",\"location\":\"wh-east\",\"qty\":1}"
  if [ "$3" = cart ]; then
    lines='{"sku":"hot-1","location":"wh-east","qty":1},{"sku":"hot-2","location":"wh-east","qty":1}'
  fi
  "$OHA_BIN" --no-tui --latency-correction --worker-threads 1 -z "${SECONDS_EACH}s" \
    -c 8 -q "$4" -m POST -H "Authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' \
    -d "{\"channel\":\"web\",\"lines\":[$lines],\"ttl_seconds\":3600}" \
    --output-format json "http://127.0.0.1:$2/v1/reservations" >"$1"
}

# run_groups NAME SPREAD: the 4 processes of two groups; SPREAD=yes sends each
# group's SKU to its owner, no sends both to group 0's owner, cart sends carts of
# both to group 0's owner. hot-1 is in group 0, hot-2 in group 1 (64 partitions).
run_groups() {
  local name=$1 spread=$2 stream="BENCH$RANDOM$RANDOM" pid
  # n1 = machine a's group 0, n2 = b's group 1: started first, they own them.
  start_node 1 yes "$stream" 0 a
  start_node 2 yes "$stream" 1 b
  start_node 3 yes "$stream" 0 b
  start_node 4 yes "$stream" 1 a
  curl -sSf "http://127.0.0.1:$HTTP_BASE/v1/events" -H "Authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' \
    -d '{"events":[{"event_id":"g-seed-1","type":"receipt","source":"bench","sku":"hot-1","location":"wh-east","qty":100000000},
                   {"event_id":"g-seed-2","type":"receipt","source":"bench","sku":"hot-2","location":"wh-east","qty":100000000}]}' \
    >/dev/null || die "seeding failed"
  sleep 1
  local before=() nats_before=0
  for pid in "${PIDS[@]}"; do before+=("$(cpu "$pid")"); done
  for pid in $(nats_pids); do nats_before=$((nats_before + $(cpu "$pid"))); done
  local second=$((HTTP_BASE + 1))
  [ "$spread" = yes ] || second=$HTTP_BASE
  if [ "$spread" = cart ]; then
    # One generator; each cart is a reservation in each group.
    load "$WORK/$name-0.json" "$HTTP_BASE" cart $((RATE / 2))
    cp "$WORK/$name-0.json" "$WORK/$name-1.json"
  else
    load "$WORK/$name-0.json" "$HTTP_BASE" hot-1 $((RATE / 2)) &
    local first_load=$!
    load "$WORK/$name-1.json" "$second" hot-2 $((RATE / 2))
    wait "$first_load"
  fi
  local after=() nats_after=0
  for pid in "${PIDS[@]}"; do after+=("$(cpu "$pid")"); done
  for pid in $(nats_pids); do nats_after=$((nats_after + $(cpu "$pid"))); done
  local ticks=""
  for i in 0 1 2 3; do ticks+="$(( ${after[$i]} - ${before[$i]} )),"; done
  local batch
  batch=$(curl -s "http://127.0.0.1:$HTTP_BASE/metrics" | awk '
    /^stockwire_journal_appends_total / {a=$2} /^stockwire_journal_commits_total / {c=$2}
    END {if (c > 0) printf "%.2f", a / c; else print "0"}')
  stop_nodes
  python3 - "$name" "$WORK/$name-0.json" "$WORK/$name-1.json" "$ticks" "$((nats_after - nats_before))" "$(getconf CLK_TCK)" "$spread" "$batch" <<'PY' | tee -a "$WORK/results.txt"
import json, sys
name, p0, p1, ticks, nats, hz, spread, batch = sys.argv[1:]
d = [json.load(open(p)) for p in (p0, p1)]
ok = [x.get("statusCodeDistribution", {}).get("201", 0) or 1 for x in d]
total = sum(ok)
ticks = [int(t) for t in ticks.strip(",").split(",")]
us = lambda t, n: t / int(hz) * 1e6 / n
# n1 and n2 own the groups; each decided its group's reservations.
owners = [us(ticks[0], ok[0]), us(ticks[1], ok[1])]
# n3 follows group 0, n4 group 1: each per reservation of its group.
followers = [us(ticks[2], ok[0]), us(ticks[3], ok[1])]
p50 = max(x["latencyPercentiles"]["p50"] for x in d) * 1000
p99 = max(x["latencyPercentiles"]["p99"] for x in d) * 1000
rps = sum(x["summary"]["requestsPerSec"] for x in d)
if spread == "cart":
    # One generator, counted once: carts, each a part in each group (CPU per cart).
    rps, total = rps / 2, ok[0]
cluster = (sum(ticks) + int(nats)) / int(hz) * 1e6 / total
print(f"{name} {p50:.3f} {p99:.3f} {rps:.0f} {total} {sum(owners)/2:.1f} {sum(followers)/2:.1f} "
      f"0.0 {us(int(nats), total):.1f} {cluster:.1f} {batch}")
PY
}

echo "bench-cluster: oha (1 thread), ${RATE}/s, ${SECONDS_EACH}s each, $ROUNDS round(s); nats $NATS_URLS"
echo "name p50_ms p99_ms rps ok owner_us follower_us forwarder_us nats_us total_us appends_per_commit (CPU per reservation)"
SETUPS=${CLUSTER_SETUPS:-single cluster-1 cluster-2 cluster-3 forwarded}
for round in $(seq "$ROUNDS"); do
  for setup in $SETUPS; do
    case $setup in
      single) run single 1 no 1 ;;
      single-cart) BODY=$CART_BODY RUN_RATE=$((RATE / 2)) run single-cart 1 no 1 ;;
      cluster-[123]) run "$setup" "${setup#cluster-}" yes 1 ;;
      forwarded) run forwarded 3 yes 2 ;;
      groups-2) run_groups groups-2 yes ;;
      groups-2-fwd) run_groups groups-2-fwd no ;;
      groups-2-cart) run_groups groups-2-cart cart ;;
      *) die "unknown setup $setup (single, single-cart, cluster-1, cluster-2, cluster-3, forwarded, groups-2, groups-2-fwd, groups-2-cart)" ;;
    esac
  done
done
echo
echo "medians over $ROUNDS round(s), ${RATE}/s open loop, CPU µs per reservation:"
python3 - "$WORK/results.txt" <<'PY'
import statistics, sys
rows = {}
order = []
for line in open(sys.argv[1]):
    f = line.split()
    if f[0] not in rows:
        order.append(f[0])
    rows.setdefault(f[0], []).append([float(x) for x in f[1:]])
print(f"{'setup':>10} {'p50 ms':>8} {'p99 ms':>8} {'rps':>6} {'owner':>7} {'follower':>9} {'forwarder':>10} {'nats (3)':>9} {'total':>7} {'batch':>6}")
for name in order:
    v = rows[name]
    med = lambda i: statistics.median(x[i] for x in v)
    print(f"{name:>10} {med(0):>8.3f} {med(1):>8.3f} {med(2):>6.0f} {med(4):>7.1f} {med(5):>9.1f} {med(6):>10.1f} {med(7):>9.1f} {med(8):>7.1f} {med(9):>6.2f}")
PY
