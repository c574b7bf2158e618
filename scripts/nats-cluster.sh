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
# until each of the three answers on its monitoring port and JetStream has a meta
# leader, and prints the client URL list. It refuses a DIR whose cluster still runs
# and ports another process holds. Everything listens on 127.0.0.1. `stop` stops
# the three servers and waits for them (their data stays in DIR).
#
# The three share this machine's cores: each runs with GOMAXPROCS = cores / 3 (at
# least 1; NATS_GOMAXPROCS overrides). Left at Go's default, each would schedule
# on every core, and on 2 cores the three servers' idle-spinning threads competed
# with each other and with the nodes: the p99 of a cluster-mode reservation at
# 2,000/s was 6.3 ms instead of 3.9 ms (docs/PERFORMANCE.md, "Cluster mode").
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

# ours PID_FILE: the pid in it, when that process is still one of our nats-servers.
ours() {
  local pid
  [ -e "$1" ] || return 1
  pid=$(cat "$1")
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "nats-server.*$dir/" || return 1
  echo "$pid"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

stop_all() {
  local pid_file pid
  for pid_file in "$dir"/n*.pid; do
    [ -e "$pid_file" ] || continue
    if pid=$(ours "$pid_file"); then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pid_file"
  done
}

case $action in
  start)
    bin=$(nats_server)
    procs=${NATS_GOMAXPROCS:-$(( $(nproc) / 3 ))}
    [ "$procs" -ge 1 ] || procs=1
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    for i in 1 2 3; do
      if ours "$dir/n$i.pid" >/dev/null; then
        echo "a cluster from $dir is running: $0 stop $dir first" >&2
        exit 1
      fi
    done
    for i in 0 1 2; do
      for port in $((base + i)) $((base + 100 + i)) $((base + 200 + i)); do
        port_free "$port" || { echo "port $port is taken: choose another BASE_PORT" >&2; exit 1; }
      done
    done
    routes=""
    for i in 0 1 2; do
      routes+="${routes:+, }nats-route://127.0.0.1:$((base + 100 + i))"
    done
    for i in 0 1 2; do
      name="n$((i + 1))"
      cat >"$dir/$name.conf" <<CONF
server_name: $name
listen: 127.0.0.1:$((base + i))
http: 127.0.0.1:$((base + 200 + i))
jetstream { store_dir: "$dir/$name" }
cluster {
  name: stockwire
  listen: 127.0.0.1:$((base + 100 + i))
  routes: [ $routes ]
}
CONF
      # Its own stdio, so a caller reading this script's output is not held open.
      GOMAXPROCS=$procs "$bin" -c "$dir/$name.conf" -l "$dir/$name.log" </dev/null >>"$dir/$name.out" 2>&1 &
      echo $! >"$dir/$name.pid"
    done
    # Up: each of the three answers as itself, and JetStream has a meta leader.
    for _ in $(seq 200); do
      up=0
      for i in 0 1 2; do
        ours "$dir/n$((i + 1)).pid" >/dev/null || { echo "n$((i + 1)) exited; see $dir/n$((i + 1)).log" >&2; stop_all; exit 1; }
        curl -sf "http://127.0.0.1:$((base + 200 + i))/jsz" 2>/dev/null | grep -q '"leader"' && up=$((up + 1))
      done
      if [ "$up" = 3 ]; then
        echo "nats://127.0.0.1:$base,nats://127.0.0.1:$((base + 1)),nats://127.0.0.1:$((base + 2))"
        exit 0
      fi
      sleep 0.1
    done
    echo "no JetStream meta leader after 20 s; logs in $dir" >&2
    stop_all
    exit 1
    ;;
  stop)
    [ -d "$dir" ] || exit 0
    dir=$(cd "$dir" && pwd)
    stop_all
    ;;
  *)
    usage
    ;;
esac
