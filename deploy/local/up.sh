#!/usr/bin/env bash
# up.sh — a tandem cluster on loopback: Debian's etcd (data in a temp dir),
# one verifier and one drafter worker (the default model unless
# TANDEM_MODEL is set) and one coordinator, each its own process. Waits
# until the coordinator says it is ready (grpc.health.v1), then prints its
# address. deploy/local/down.sh stops everything by PID.
#
# --gateway: also the Shepherd Model Gateway (PyPI `smg`, installed by
# scripts/setup.sh into $TANDEM_GATEWAY_VENV, default build/venv-gateway) in
# front of the coordinator's vLLM engine API: OpenAI-compatible HTTP
# (/v1/completions, /v1/chat/completions) on $TANDEM_GATEWAY_PORT (default
# a free one), its address written to $TANDEM_LOCAL_DIR/gateway-address.
#
# Environment: TANDEM_LOCAL_DIR (state: pids, logs, etcd data; default
# /tmp/tandem-local), TANDEM_MODEL, TANDEM_PORT (coordinator port, default
# a free one), TANDEM_THREADS (verifier threads, default all cores),
# TANDEM_BUILD (default build/), TANDEM_TP (N > 1: the verifier is a
# tensor-parallel group of N processes, `mpirun -np N tandem-worker --tp N`,
# each with TANDEM_THREADS / N threads; rank 0 registers with tp: N),
# TANDEM_VERIFIER_FLAGS and TANDEM_COORD_FLAGS (extra flags for the verifier
# and the coordinator, e.g. --no-prefix-cache or --vllm-drafters none).
set -euo pipefail
cd "$(dirname "$0")/../.."
GATEWAY=0
for arg in "$@"; do
  case "$arg" in
    --gateway) GATEWAY=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "[up] unknown option: $arg (see --help)" >&2; exit 2 ;;
  esac
done
DIR=${TANDEM_LOCAL_DIR:-/tmp/tandem-local}
BUILD=${TANDEM_BUILD:-build}
MODEL=${TANDEM_MODEL:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem/models/SmolLM2-135M-Instruct.Q4_1.gguf}
THREADS=${TANDEM_THREADS:-$(nproc)}
TTL=${TANDEM_LEASE_TTL:-10}
TP=${TANDEM_TP:-1}

log() { printf '[up] %s\n' "$*"; }
die() { printf '[up] error: %s\n' "$*" >&2; exit 1; }

for b in "$BUILD/tandem-worker" "$BUILD/tandem-coordinator" "$BUILD/tandem"; do
  [ -x "$b" ] || die "$b is missing: run scripts/setup.sh first"
done
VENV=${TANDEM_GATEWAY_VENV:-$BUILD/venv-gateway}
if [ "$GATEWAY" = 1 ] && [ ! -x "$VENV/bin/smg" ]; then
  die "the gateway is not installed ($VENV/bin/smg): run scripts/setup.sh"
fi
command -v etcd >/dev/null || die "etcd is not installed (Debian package etcd-server; scripts/setup.sh installs it)"
[ -f "$MODEL" ] || die "model $MODEL is missing: run scripts/setup.sh or set TANDEM_MODEL"
if [ -f "$DIR/pids" ] && [ -s "$DIR/pids" ]; then
  die "a cluster seems to be up already (state in $DIR): run deploy/local/down.sh first"
fi
mkdir -p "$DIR/logs"
rm -rf "$DIR/etcd-data"
: > "$DIR/pids"

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
start() { # name, command...: runs in the background, logs to logs/NAME.log, remembers its PID
  local name=$1; shift
  "$@" >"$DIR/logs/$name.log" 2>&1 &
  echo "$! $name" >>"$DIR/pids"
}
fail() { log "$1 (last log lines follow)"; tail -n 20 "$DIR/logs/$2.log" >&2 || true; deploy/local/down.sh >/dev/null 2>&1 || true; exit 1; }

ETCD_PORT=$(free_port); PEER_PORT=$(free_port)
start etcd etcd --name local --data-dir "$DIR/etcd-data" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
  --initial-cluster "local=http://127.0.0.1:$PEER_PORT"
for _ in $(seq 1 100); do
  ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$ETCD_PORT" endpoint health >/dev/null 2>&1 && break
  sleep 0.1
done
ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$ETCD_PORT" endpoint health >/dev/null 2>&1 || fail "etcd did not start" etcd
log "etcd on 127.0.0.1:$ETCD_PORT (data in $DIR/etcd-data)"

ETCD="127.0.0.1:$ETCD_PORT"
# Prometheus metrics of each process (GET /metrics), addresses in $DIR/metrics
M_VERIFIER=127.0.0.1:$(free_port); M_DRAFTER=127.0.0.1:$(free_port); M_COORD=127.0.0.1:$(free_port)
printf 'coordinator %s\nverifier %s\ndrafter %s\n' "$M_COORD" "$M_VERIFIER" "$M_DRAFTER" >"$DIR/metrics"
if [ "$TP" -gt 1 ]; then
  command -v mpirun >/dev/null || die "TANDEM_TP=$TP needs mpirun (Debian package openmpi-bin)"
  # down.sh stops mpirun by PID; mpirun takes its ranks down with it
  TP_THREADS=$(( THREADS / TP > 0 ? THREADS / TP : 1 ))
  start verifier mpirun --allow-run-as-root --oversubscribe -np "$TP" \
    "$BUILD/tandem-worker" --role verifier --tp "$TP" --model "$MODEL" --listen 127.0.0.1:0 --etcd "$ETCD" \
    --cluster local --threads "$TP_THREADS" --lease-ttl "$TTL" --id verifier-1 --metrics-listen "$M_VERIFIER" \
    ${TANDEM_VERIFIER_FLAGS:-}
  log "verifier: a TP=$TP group (mpirun -np $TP, $TP_THREADS thread(s) per rank)"
else
  start verifier "$BUILD/tandem-worker" --role verifier --model "$MODEL" --listen 127.0.0.1:0 --etcd "$ETCD" \
    --cluster local --threads "$THREADS" --lease-ttl "$TTL" --id verifier-1 --metrics-listen "$M_VERIFIER" \
    ${TANDEM_VERIFIER_FLAGS:-}
fi
start drafter "$BUILD/tandem-worker" --role drafter --model "$MODEL" --listen 127.0.0.1:0 --etcd "$ETCD" \
  --cluster local --threads 1 --lease-ttl "$TTL" --id drafter-1 --metrics-listen "$M_DRAFTER"
PORT=${TANDEM_PORT:-$(free_port)}
HEALTH_PORT=$(free_port)
start coordinator "$BUILD/tandem-coordinator" --listen "127.0.0.1:$PORT" --health-listen "127.0.0.1:$HEALTH_PORT" \
  --etcd "$ETCD" --cluster local --metrics-listen "$M_COORD" ${TANDEM_COORD_FLAGS:-}
ADDR="127.0.0.1:$PORT"
for _ in $(seq 1 300); do
  "$BUILD/tandem" health --server "$ADDR" --service tandem.v1.Inference >/dev/null 2>&1 && break
  while read -r pid name; do kill -0 "$pid" 2>/dev/null || fail "$name exited" "$name"; done <"$DIR/pids"
  sleep 0.2
done
"$BUILD/tandem" health --server "$ADDR" --service tandem.v1.Inference >/dev/null 2>&1 || fail "the coordinator is not ready after 60 s" coordinator
echo "$ADDR" >"$DIR/address"
echo "127.0.0.1:$HEALTH_PORT" >"$DIR/health-address"
echo "$ETCD" >"$DIR/etcd-address"
log "cluster up: coordinator $ADDR (health on 127.0.0.1:$HEALTH_PORT), verifier and drafter registered in etcd"
if [ "$GATEWAY" = 1 ]; then
  GW_PORT=${TANDEM_GATEWAY_PORT:-$(free_port)}
  GW_METRICS=$(free_port)
  start gateway "$VENV/bin/smg" launch --backend vllm --worker-urls "grpc://$ADDR" \
    --host 127.0.0.1 --port "$GW_PORT" --prometheus-host 127.0.0.1 --prometheus-port "$GW_METRICS"
  # ready once the worker is registered and its tokenizer loaded: /v1/models lists the model
  for _ in $(seq 1 300); do
    /usr/bin/python3 - "$GW_PORT" <<'PY' >/dev/null 2>&1 && break
import json, sys, urllib.request
d = json.load(urllib.request.urlopen("http://127.0.0.1:%s/v1/models" % sys.argv[1], timeout=2))
sys.exit(0 if d.get("data") else 1)
PY
    while read -r pid name; do kill -0 "$pid" 2>/dev/null || fail "$name exited" "$name"; done <"$DIR/pids"
    sleep 0.2
  done
  /usr/bin/python3 -c "import json,urllib.request,sys; sys.exit(0 if json.load(urllib.request.urlopen('http://127.0.0.1:$GW_PORT/v1/models', timeout=2)).get('data') else 1)" \
    >/dev/null 2>&1 || fail "the gateway did not list the model after 60 s" gateway
  echo "127.0.0.1:$GW_PORT" >"$DIR/gateway-address"
  log "gateway up: OpenAI-compatible HTTP on http://127.0.0.1:$GW_PORT/v1 (metrics on :$GW_METRICS)"
fi
log "metrics: curl http://$M_COORD/metrics (all three addresses in $DIR/metrics)"
log "logs in $DIR/logs; stop with deploy/local/down.sh"
echo "$ADDR"
