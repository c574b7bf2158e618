#!/bin/sh
# The restart command of restart-under-load: kill -9 the stockwire whose pid is in
# $LOADTEST_PID_FILE, wait until it is gone, start `$LOADTEST_SERVE` again in the
# background and write its pid back. Example:
#   LOADTEST_PID_FILE=/tmp/sw.pid LOADTEST_SERVE="target/release/stockwire serve --config my.toml"
set -eu
: "${LOADTEST_PID_FILE:?set LOADTEST_PID_FILE}" "${LOADTEST_SERVE:?set LOADTEST_SERVE}"
pid=$(cat "$LOADTEST_PID_FILE")
kill -9 "$pid" 2>/dev/null || true
# Gone, or a zombie its parent has not reaped yet whose threads have all exited (it
# then holds no file: not the port, not RocksDB's LOCK): at most 10 s.
i=0
while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 200 ]; do
  if [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" = Z ] \
     && [ -z "$(ls "/proc/$pid/fd" 2>/dev/null)" ]; then
    break
  fi
  sleep 0.05
  i=$((i + 1))
done
sh -c "exec $LOADTEST_SERVE" >>"${LOADTEST_LOG_FILE:-/dev/null}" 2>&1 &
echo $! > "$LOADTEST_PID_FILE"
