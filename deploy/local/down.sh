#!/usr/bin/env bash
# down.sh — stops the loopback cluster of up.sh by PID: SIGTERM (the
# processes deregister and drain), SIGKILL after 10 s, then removes etcd's
# data. Logs stay in $TANDEM_LOCAL_DIR/logs.
set -uo pipefail
DIR=${TANDEM_LOCAL_DIR:-/tmp/tandem-local}
[ -f "$DIR/pids" ] || { echo "[down] nothing to stop ($DIR/pids not found)"; exit 0; }
# coordinator first, etcd last: workers deregister while etcd still runs
tac "$DIR/pids" | while read -r pid name; do
  [ -n "$pid" ] || continue
  kill -TERM "$pid" 2>/dev/null || continue
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "[down] $name ($pid) still running after 10 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null
  fi
  echo "[down] stopped $name ($pid)"
done
rm -f "$DIR/pids" "$DIR/address" "$DIR/health-address" "$DIR/etcd-address" "$DIR/gateway-address"
rm -rf "$DIR/etcd-data"
