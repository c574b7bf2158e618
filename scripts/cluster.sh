#!/usr/bin/env bash
# Cluster mode on one machine (docs/CLUSTER.md): a 3-server NATS cluster with
# JetStream (scripts/nats-cluster.sh) and 3 stockwire nodes on it, each under a
# supervisor loop that restarts it when it exits or is killed (a node that loses
# ownership exits with status 3 and rejoins as a follower).
#
#   scripts/cluster.sh run DIR      # start, wait for Ctrl-C, stop (`make cluster`)
#   scripts/cluster.sh start DIR    # in the background
#   scripts/cluster.sh stop DIR
#
# Nodes n1..n3 listen on 127.0.0.1:${HTTP_BASE:-8081}..+2, NATS clients on
# ${NATS_BASE:-4222}..+2; data, configs and logs under DIR.
#
# With CLUSTER_GROUPS=G (1 by default), the partitions are spread over G partition groups
# (docs/CLUSTER.md, "Partition groups"): each of the 3 "machines" n1..n3 runs one
# process per group, n<i>-g<g>, listening on HTTP_BASE + (i-1)*G + g; at rest
# machine n<g+1> owns group g. The nodes' config is
# ${STOCKWIRE_CONFIG:-config/stockwire.toml} with its listen and data_dir replaced
# and a [cluster] table added. The binary: ${STOCKWIRE_BIN:-target/release/stockwire}.
set -euo pipefail

usage() { echo "usage: $0 run|start|stop DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
action=$1
dir=$2
here=$(cd "$(dirname "$0")/.." && pwd)
http_base=${HTTP_BASE:-8081}
nats_base=${NATS_BASE:-4222}
target=${CARGO_TARGET_DIR:-$here/target}
bin=${STOCKWIRE_BIN:-$target/release/stockwire}
config=${STOCKWIRE_CONFIG:-$here/config/stockwire.toml}
groups=${CLUSTER_GROUPS:-1}

# members: "NAME MACHINE GROUP PORT" per process, in start order: every group's
# preferred owner first (machine n<g+1> for group g), so that it takes over.
members() {
  local g i
  if [ "$groups" -le 1 ]; then
    for i in 1 2 3; do echo "n$i n$i 0 $((http_base + i - 1))"; done
    return
  fi
  for g in $(seq 0 $((groups - 1))); do
    i=$((g % 3 + 1))
    echo "n$i-g$g n$i $g $((http_base + (i - 1) * groups + g))"
  done
  for g in $(seq 0 $((groups - 1))); do
    for i in 1 2 3; do
      [ "$i" -eq $((g % 3 + 1)) ] && continue
      echo "n$i-g$g n$i $g $((http_base + (i - 1) * groups + g))"
    done
  done
}

start() {
  [ -x "$bin" ] || { echo "no stockwire binary at $bin: cargo build --release (or set STOCKWIRE_BIN)" >&2; exit 1; }
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [ -e "$dir/running" ]; then
    echo "a cluster from $dir is running: $0 stop $dir first" >&2
    exit 1
  fi
  urls=$("$here/scripts/nats-cluster.sh" start "$dir/nats" "$nats_base")
  touch "$dir/running"
  members >"$dir/members"
  while read -r name machine group port; do
    mkdir -p "$dir/$name"
    # The shipped config, on this node's port and data dir, with [cluster] added.
    grep -v -E '^(listen|data_dir)[[:space:]]*=' "$config" >"$dir/$name.body.toml"
    {
      echo "listen = \"127.0.0.1:$port\""
      echo "data_dir = \"$dir/$name/data\""
      cat "$dir/$name.body.toml"
      echo
      echo "[cluster]"
      echo "node = \"$machine\""
      echo "url = \"$urls\""
      echo "advertise = \"http://127.0.0.1:$port\""
      if [ "$groups" -gt 1 ]; then
        echo "groups = $groups"
        echo "group = $group"
      fi
    } >"$dir/$name.toml"
    rm -f "$dir/$name.body.toml" "$dir/$name.stop"
    # The supervisor: runs the node again whenever it exits, until stopped.
    (
      trap '' INT
      while [ ! -e "$dir/$name.stop" ]; do
        began=$SECONDS
        # This script's own STOCKWIRE_* settings are not the node's config.
        env -u STOCKWIRE_BIN -u STOCKWIRE_CONFIG "$bin" serve --config "$dir/$name.toml" >>"$dir/$name.log" 2>&1 &
        echo $! >"$dir/$name.pid"
        status=0
        wait $! || status=$?
        echo "$(date -u +%FT%TZ) $name exited with status $status" >>"$dir/$name.exits"
        [ -e "$dir/$name.stop" ] && break
        # A node that cannot start (bad config, data dir) is not restarted in a hot loop.
        if [ $((SECONDS - began)) -lt 2 ]; then sleep 2; else sleep 0.2; fi
      done
    ) </dev/null >/dev/null 2>&1 &
    echo $! >"$dir/$name.supervisor"
    # Each group's preferred owner is ready (it owns its group) before the next
    # process starts; the others only need a live owner.
    ready "$name" "$port" || { stop; exit 1; }
  done <"$dir/members"
  echo "nodes: $(awk '{printf "%shttp://127.0.0.1:%s", (NR > 1 ? " " : ""), $4}' "$dir/members")"
  echo "nats:  $urls"
}

# ready NAME PORT: waits up to a minute for the node's /readyz.
ready() {
  for _ in $(seq 600); do
    curl -fs "http://127.0.0.1:$2/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "node $1 is not ready (see $dir/$1.log)" >&2
  return 1
}

stop() {
  dir=$(cd "$dir" 2>/dev/null && pwd) || return 0
  local names=()
  if [ -s "$dir/members" ]; then
    while read -r name _; do names+=("$name"); done <"$dir/members"
  fi
  for name in "${names[@]}"; do
    touch "$dir/$name.stop"
  done
  for name in "${names[@]}"; do
    if [ -s "$dir/$name.pid" ]; then
      pid=$(cat "$dir/$name.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    if [ -s "$dir/$name.supervisor" ]; then
      sup=$(cat "$dir/$name.supervisor")
      for _ in $(seq 50); do kill -0 "$sup" 2>/dev/null || break; sleep 0.1; done
      kill "$sup" 2>/dev/null || true
    fi
    rm -f "$dir/$name.pid" "$dir/$name.supervisor"
  done
  "$here/scripts/nats-cluster.sh" stop "$dir/nats" || true
  rm -f "$dir/running"
}

case $action in
  start) start ;;
  stop) stop ;;
  run)
    start
    trap 'stop; exit 0' INT TERM
    echo "running; Ctrl-C stops the cluster (data stays in $dir)"
    while true; do sleep 1; done
    ;;
  *) usage ;;
esac
