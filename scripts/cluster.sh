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
# ${NATS_BASE:-4222}..+2; data, configs and logs under DIR. The nodes' config is
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
  for i in 1 2 3; do
    port=$((http_base + i - 1))
    mkdir -p "$dir/n$i"
    # The shipped config, on this node's port and data dir, with [cluster] added.
    grep -v -E '^(listen|data_dir)[[:space:]]*=' "$config" >"$dir/n$i.body.toml"
    {
      echo "listen = \"127.0.0.1:$port\""
      echo "data_dir = \"$dir/n$i/data\""
      cat "$dir/n$i.body.toml"
      echo
      echo "[cluster]"
      echo "node = \"n$i\""
      echo "url = \"$urls\""
      echo "advertise = \"http://127.0.0.1:$port\""
    } >"$dir/n$i.toml"
    rm -f "$dir/n$i.body.toml" "$dir/n$i.stop"
    # The supervisor: runs the node again whenever it exits, until stopped.
    (
      trap '' INT
      while [ ! -e "$dir/n$i.stop" ]; do
        began=$SECONDS
        # This script's own STOCKWIRE_* settings are not the node's config.
        env -u STOCKWIRE_BIN -u STOCKWIRE_CONFIG "$bin" serve --config "$dir/n$i.toml" >>"$dir/n$i.log" 2>&1 &
        echo $! >"$dir/n$i.pid"
        status=0
        wait $! || status=$?
        echo "$(date -u +%FT%TZ) n$i exited with status $status" >>"$dir/n$i.exits"
        [ -e "$dir/n$i.stop" ] && break
        # A node that cannot start (bad config, data dir) is not restarted in a hot loop.
        if [ $((SECONDS - began)) -lt 2 ]; then sleep 2; else sleep 0.2; fi
      done
    ) </dev/null >/dev/null 2>&1 &
    echo $! >"$dir/n$i.supervisor"
  done
  for i in 1 2 3; do
    port=$((http_base + i - 1))
    for _ in $(seq 600); do
      curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
      sleep 0.1
    done
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null || { echo "node n$i is not ready (see $dir/n$i.log)" >&2; stop; exit 1; }
  done
  echo "nodes: http://127.0.0.1:$http_base http://127.0.0.1:$((http_base + 1)) http://127.0.0.1:$((http_base + 2))"
  echo "nats:  $urls"
}

stop() {
  dir=$(cd "$dir" 2>/dev/null && pwd) || return 0
  for i in 1 2 3; do
    touch "$dir/n$i.stop"
  done
  for i in 1 2 3; do
    if [ -s "$dir/n$i.pid" ]; then
      pid=$(cat "$dir/n$i.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    if [ -s "$dir/n$i.supervisor" ]; then
      sup=$(cat "$dir/n$i.supervisor")
      for _ in $(seq 50); do kill -0 "$sup" 2>/dev/null || break; sleep 0.1; done
      kill "$sup" 2>/dev/null || true
    fi
    rm -f "$dir/n$i.pid" "$dir/n$i.supervisor"
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
