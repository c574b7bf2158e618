#!/usr/bin/env bash
# A 3-server NATS cluster with JetStream on loopback, for trying cluster-grade
# JetStream streams (R3) on one machine: the groundwork of cluster mode (issue 13)
# and of `examples/jetstream_latency.rs`.
#
#   scripts/nats-cluster.sh start DIR [BASE_PORT]   # clients on BASE_PORT..+2 (default 14222)
#   scripts/nats-cluster.sh stop DIR
#
# `start` writes one config per server under DIR, starts Debian's nats-server three
# times (cluster routes on BASE_PORT+100.., monitoring on BASE_PORT+200..), waits
# until JetStream has a meta leader, and prints the client URL list. Everything
# listens on 127.0.0.1. `stop` kills the three servers (their data stays in DIR).
set -euo pipefail

usage() { echo "usage: $0 start DIR [BASE_PORT] | stop DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
action=$1
dir=$2
base=${3:-14222}

nats_server() {
  for candidate in nats-server /usr/sbin/nats-server /usr/bin/nats-server; do
    if command -v "$candidate" >/dev/null 2>&1; then echo "$candidate"; return; fi
  done
  echo "nats-server not found: apt-get install nats-server (or scripts/install-deps.sh --test)" >&2
  exit 1
}

case $action in
  start)
    bin=$(nats_server)
    mkdir -p "$dir"
    routes=""
    for i in 0 1 2; do
      routes+="${routes:+, }nats-route://127.0.0.1:$((base + 100 + i))"
    done
    for i in 0 1 2; do
      name="n$((i + 1))"
      cat >"$dir/$name.conf" <<EOF
server_name: $name
listen: 127.0.0.1:$((base + i))
http: 127.0.0.1:$((base + 200 + i))
jetstream { store_dir: "$dir/$name" }
cluster {
  name: stockwire
  listen: 127.0.0.1:$((base + 100 + i))
  routes: [ $routes ]
}
EOF
      "$bin" -c "$dir/$name.conf" -l "$dir/$name.log" &
      echo $! >"$dir/$name.pid"
    done
    # JetStream is usable once the servers elected a meta leader.
    for _ in $(seq 200); do
      if curl -sf "http://127.0.0.1:$((base + 200))/jsz" 2>/dev/null | grep -q '"leader"'; then
        echo "nats://127.0.0.1:$base,nats://127.0.0.1:$((base + 1)),nats://127.0.0.1:$((base + 2))"
        exit 0
      fi
      sleep 0.1
    done
    echo "no JetStream meta leader after 20 s; logs in $dir" >&2
    "$0" stop "$dir"
    exit 1
    ;;
  stop)
    for pid_file in "$dir"/n*.pid; do
      [ -e "$pid_file" ] || continue
      kill "$(cat "$pid_file")" 2>/dev/null || true
      rm -f "$pid_file"
    done
    ;;
  *)
    usage
    ;;
esac
