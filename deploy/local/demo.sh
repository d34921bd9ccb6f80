#!/usr/bin/env bash
# demo.sh — brings the loopback cluster up (up.sh) and sends it one
# streamed generation and one small batch-scoring job through the tandem
# CLI. The cluster stays up for more requests; deploy/local/down.sh stops
# it (or pass --down to stop it at the end).
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=${TANDEM_LOCAL_DIR:-/tmp/tandem-local}
BUILD=${TANDEM_BUILD:-build}
if [ -f "$DIR/address" ] && "$BUILD/tandem" health --server "$(cat "$DIR/address")" >/dev/null 2>&1; then
  echo "[demo] using the cluster already up at $(cat "$DIR/address")"
else
  deploy/local/up.sh >/dev/null
fi
ADDR=$(cat "$DIR/address")
echo "[demo] tandem generate --server $ADDR --chat --draft auto --prompt ..."
"$BUILD/tandem" generate --server "$ADDR" --chat --draft auto --max-tokens 96 \
  --prompt "Explain speculative decoding in two sentences."
out=$(mktemp -d)/scores.jsonl
echo "[demo] tandem score --server $ADDR --in deploy/local/demo-items.jsonl --out $out"
"$BUILD/tandem" score --server "$ADDR" --in deploy/local/demo-items.jsonl --out "$out"
/usr/bin/python3 - "$out" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print("  %-10s logprob %8.3f over %d tokens%s" % (r["custom_id"], r["logprob_sum"], r["token_count"],
                                                      "  (greedy)" if r["all_greedy"] else ""))
PY
if [ "${1:-}" = "--down" ]; then
  deploy/local/down.sh
else
  echo "[demo] the cluster is still up at $ADDR (logs in $DIR/logs); stop it with deploy/local/down.sh"
fi
