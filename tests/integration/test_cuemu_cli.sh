#!/usr/bin/env bash
# test_cuemu_cli.sh — `--device cuda` through the CLI, on the CPU emulator
# (tandem-cuemu: the CLI linked against tests/cuemu/), against the CPU's
# reference order: the same checks tests/bench/cuda_device_check.sh `run`
# makes on a lent GPU, on a tiny model. The GPU's reference order has the
# CPU's bits, so text and per-token scores must be identical: greedy,
# seeded (picks from the device's summaries), speculative, rejection mode
# (the device's verdicts), and perplexity's per-token logprobs (the
# device's scores).
#
# usage: test_cuemu_cli.sh TANDEM_CUEMU TANDEM TD_MKTINY
set -euo pipefail
EMU=$1 CPU=$2 MKTINY=$3
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
M=$DIR/tiny.gguf
"$MKTINY" "$M" --type Q4_1 > /dev/null
SRC=$(cd "$(dirname "$0")/../.." && pwd)
fails=0

same() { # name, then the two files
  if cmp -s "$2" "$3"; then
    echo "ok   $1 ($(wc -c < "$2") bytes)"
  else
    echo "FAIL $1: the emulated GPU's output differs from the CPU's"
    diff "$2" "$3" | head -5
    fails=$((fails + 1))
  fi
}

P="the quick brown fox jumps over the lazy dog and the quick brown fox"
S="--temperature 0.8 --top-k 40 --top-p 0.95 --seed 7"
i=0
for args in "" "--draft lookup" "$S" "--draft lookup $S" "--draft lookup --draft-mode rejection $S" \
  "--draft lookup --draft-mode rejection"; do
  i=$((i + 1))
  # shellcheck disable=SC2086
  "$CPU" generate --model "$M" --prompt "$P" --max-tokens 24 --ignore-eos --numerics reference $args \
    > "$DIR/cpu$i.txt" 2> "$DIR/cpu$i.err" || { echo "FAIL cpu generate $args"; cat "$DIR/cpu$i.err"; exit 1; }
  # shellcheck disable=SC2086
  "$EMU" generate --model "$M" --prompt "$P" --max-tokens 24 --ignore-eos --device cuda $args \
    > "$DIR/gpu$i.txt" 2> "$DIR/gpu$i.err" || { echo "FAIL gpu generate $args"; cat "$DIR/gpu$i.err"; exit 1; }
  [ -s "$DIR/cpu$i.txt" ] || { echo "FAIL generate $args wrote nothing"; exit 1; }
  same "generate ${args:-greedy}" "$DIR/cpu$i.txt" "$DIR/gpu$i.txt"
done
grep -q "kernels cuda" "$DIR/gpu1.err" || { echo "FAIL: the emulated run does not say it ran on the device"; cat "$DIR/gpu1.err"; exit 1; }

"$CPU" perplexity --model "$M" --file "$SRC/README.md" --max-tokens 200 --per-token --numerics reference \
  > "$DIR/cpu_ppl.txt" 2> "$DIR/cpu_ppl.err"
"$EMU" perplexity --model "$M" --file "$SRC/README.md" --max-tokens 200 --per-token --device cuda \
  > "$DIR/gpu_ppl.txt" 2> "$DIR/gpu_ppl.err"
[ "$(wc -l < "$DIR/cpu_ppl.txt")" -gt 100 ] || { echo "FAIL perplexity: too few lines"; exit 1; }
same "perplexity --per-token" "$DIR/cpu_ppl.txt" "$DIR/gpu_ppl.txt"

if [ "$fails" -ne 0 ]; then
  echo "$fails check(s) failed"
  exit 1
fi
echo "all checks passed"
