#!/usr/bin/env bash
# test_tp_cli.sh — `tandem generate --tp N` as a user runs it, under
# `mpirun -np N`: in the tp-invariant order the printed text of TP=2 and
# TP=3 is byte-identical to TP=1's (the README's demo prompt and a list
# prompt), speculative decoding over TP=2 prints what plain TP=2 decoding
# prints, and the refusals say why (no mpirun; a split leaving a rank
# without attention heads). Usage: test_tp_cli.sh path/to/tandem
set -uo pipefail
TANDEM=${1:?usage: test_tp_cli.sh path/to/tandem}
MODEL=${TANDEM_MODEL:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem/models/SmolLM2-135M-Instruct.Q4_1.gguf}
MPIRUN=${MPIRUN:-mpirun}
if [ ! -f "$MODEL" ]; then
  if [ "${CI:-}" = true ]; then echo "FAIL: model $MODEL missing under CI"; exit 1; fi
  echo "# model $MODEL missing: skipped"; exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0; fail=0
check() { # name, then a command that must succeed
  local name=$1; shift
  if "$@"; then pass=$((pass + 1)); echo "ok   $name"; else fail=$((fail + 1)); echo "FAIL $name"; fi
}
mpi() { local np=$1; shift; "$MPIRUN" --allow-run-as-root --oversubscribe -np "$np" "$@"; }
run_to() { # outfile command...: stdout to outfile; fails unless the exit status is 0
  local out=$1; shift
  "$@" >"$out" 2>"$tmp/err" || { echo "  exit $?: $* ; stderr: $(head -c 400 "$tmp/err")"; return 1; }
}
fails_with() { # text command...: must exit non-zero with text on stderr
  local text=$1; shift
  if "$@" >/dev/null 2>"$tmp/err"; then echo "  succeeded: $*"; return 1; fi
  grep -q -- "$text" "$tmp/err" || { echo "  stderr lacks '$text': $(head -c 400 "$tmp/err")"; return 1; }
}
same() { cmp -s "$1" "$2" || { echo "  $1 and $2 differ:"; head -c 200 "$1"; echo; head -c 200 "$2"; echo; return 1; }; }

GEN=(generate --model "$MODEL" --chat --max-tokens 48 --threads 1 --numerics tp-invariant)
i=0
for prompt in "Explain speculative decoding in two sentences." "List the numbers from 1 to 20, separated by commas."; do
  i=$((i + 1))
  check "tp1 $i" run_to "$tmp/p$i.tp1" "$TANDEM" "${GEN[@]}" --prompt "$prompt"
  check "tp2 $i" run_to "$tmp/p$i.tp2" mpi 2 "$TANDEM" "${GEN[@]}" --tp 2 --prompt "$prompt"
  check "tp3 $i" run_to "$tmp/p$i.tp3" mpi 3 "$TANDEM" "${GEN[@]}" --tp 3 --prompt "$prompt"
  check "tp2 == tp1 ($i)" same "$tmp/p$i.tp1" "$tmp/p$i.tp2"
  check "tp3 == tp1 ($i)" same "$tmp/p$i.tp1" "$tmp/p$i.tp3"
done
check "generated text is not empty" test -s "$tmp/p1.tp1"

SPEC=(generate --model "$MODEL" --chat --max-tokens 64 --threads 1 --prompt "List the numbers from 1 to 20, separated by commas.")
check "tp2 plain" run_to "$tmp/plain" mpi 2 "$TANDEM" "${SPEC[@]}" --tp 2
check "tp2 speculative" run_to "$tmp/spec" mpi 2 "$TANDEM" "${SPEC[@]}" --tp 2 --draft lookup,ngram
check "speculative over tp2 == plain tp2" same "$tmp/plain" "$tmp/spec"

check "--tp without mpirun refused" fails_with "mpirun -np 2" "$TANDEM" generate --model "$MODEL" --tp 2 --prompt hi
check "split without attention heads refused" fails_with "attn_k.weight': 3 KV heads cannot be split across 4 ranks" \
  mpi 4 "$TANDEM" generate --model "$MODEL" --tp 4 --prompt hi --threads 1
check "layerskip refused under --tp" fails_with "layerskip" \
  mpi 2 "$TANDEM" generate --model "$MODEL" --tp 2 --prompt hi --draft layerskip --threads 1

echo "test_tp_cli: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
