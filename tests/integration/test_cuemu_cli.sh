#!/usr/bin/env bash
# test_cuemu_cli.sh — `--device cuda` through the CLI, on the CPU emulator
# (tandem-cuemu: the CLI linked against tests/cuemu/), against the CPU's
# reference order: the same checks tests/bench/cuda_device_check.sh `run`
# makes on a lent GPU, on a tiny model. The GPU's reference order has the
# CPU's bits, so text and per-token scores must be identical: greedy,
# seeded (picks from the device's summaries), speculative, rejection mode
# (the device's verdicts), and perplexity's per-token logprobs (the
# device's scores); the same over a tensor-parallel group of two emulated
# GPU ranks against two CPU ranks; the GPU's invariant order over two
# ranks against one; and tp_cuda_check (passes, device picks and scores, a
# led group, the invariant order) on a two-layer model of the default
# model's shape.
#
# usage: test_cuemu_cli.sh TANDEM_CUEMU TANDEM TD_MKTINY [TP_CUDA_CHECK]
# (TP_CUDA_CHECK: tests/unit/tp_cuda_check.c built on the emulator, run
# under mpirun -np 2.) TD_CUEMU_GROUPS=quick (the sanitizer build's CTest
# sets it) keeps of the group checks only tp_cuda_check on the tiny model,
# over MPI and over NCCL: the same backend paths at a fifth of the time.
set -euo pipefail
EMU=$1 CPU=$2 MKTINY=$3 TP_CHECK=${4:-}
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

# Tensor parallelism: two emulated GPU ranks under mpirun (collectives over
# MPI through host memory) against two CPU ranks of the same split in the
# reference order: a CUDA rank's reference order is the CPU rank's, so text
# and per-token logprobs are identical. The split's sums are grouped by
# rank, so TP 2 is not TP 1's bits: the last check shows the test sees the
# split at all.
# (OpenMPI's start-up leaks in a sanitizer build: no frame of ours)
mpi() { ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
  "${MPIRUN:-mpirun}" --allow-run-as-root --oversubscribe -np 2 "$@"; }
tp_check() { # comm, model
  if mpi "$TP_CHECK" "$2" $([ "$1" = nccl ] && echo nccl) > "$DIR/tpcheck.out" 2>&1; then
    echo "ok   $(grep '^tp_cuda_check' "$DIR/tpcheck.out")"
  else
    echo "FAIL tp_cuda_check ($1, $2):"; tail -5 "$DIR/tpcheck.out"
    fails=$((fails + 1))
  fi
}
if command -v "${MPIRUN:-mpirun}" > /dev/null && [ "${TD_CUEMU_GROUPS:-}" = quick ]; then
  if [ -n "$TP_CHECK" ]; then tp_check mpi "$M"; tp_check nccl "$M"; fi
elif command -v "${MPIRUN:-mpirun}" > /dev/null; then
  i=0
  for args in "" "$S" "--draft lookup" "--draft lookup --draft-mode rejection $S"; do
    i=$((i + 1))
    # shellcheck disable=SC2086
    mpi "$CPU" generate --model "$M" --prompt "$P" --max-tokens 24 --ignore-eos --numerics reference --tp 2 \
      --threads 1 $args > "$DIR/tcpu$i.txt" 2> "$DIR/tcpu$i.err" || { echo "FAIL cpu tp2 $args"; cat "$DIR/tcpu$i.err"; exit 1; }
    # shellcheck disable=SC2086
    mpi "$EMU" generate --model "$M" --prompt "$P" --max-tokens 24 --ignore-eos --device cuda --tp 2 \
      --threads 1 $args > "$DIR/tgpu$i.txt" 2> "$DIR/tgpu$i.err" || { echo "FAIL gpu tp2 $args"; cat "$DIR/tgpu$i.err"; exit 1; }
    [ -s "$DIR/tcpu$i.txt" ] || { echo "FAIL tp2 generate $args wrote nothing"; exit 1; }
    same "tp2 generate ${args:-greedy}" "$DIR/tcpu$i.txt" "$DIR/tgpu$i.txt"
  done
  # the same group over the NCCL backend (the emulator's NCCL: device
  # buffers, no staging through the host)
  mpi "$EMU" generate --model "$M" --prompt "$P" --max-tokens 24 --ignore-eos --device cuda --tp 2 --tp-comm nccl \
    --threads 1 > "$DIR/ngpu1.txt" 2> "$DIR/ngpu1.err" || { echo "FAIL gpu tp2 nccl"; cat "$DIR/ngpu1.err"; exit 1; }
  same "tp2 generate greedy over nccl" "$DIR/tcpu1.txt" "$DIR/ngpu1.txt"
  grep -q "kernels cuda, tensor parallel" "$DIR/tgpu1.err" ||
    { echo "FAIL: the emulated tp2 run does not say it ran split on the device"; cat "$DIR/tgpu1.err"; exit 1; }
  mpi "$CPU" perplexity --model "$M" --file "$SRC/README.md" --max-tokens 200 --per-token --numerics reference \
    --tp 2 --threads 1 > "$DIR/tcpu_ppl.txt" 2> "$DIR/tcpu_ppl.err"
  mpi "$EMU" perplexity --model "$M" --file "$SRC/README.md" --max-tokens 200 --per-token --device cuda \
    --tp 2 --threads 1 > "$DIR/tgpu_ppl.txt" 2> "$DIR/tgpu_ppl.err"
  [ "$(wc -l < "$DIR/tgpu_ppl.txt")" -gt 100 ] || { echo "FAIL tp2 perplexity: too few lines"; cat "$DIR/tgpu_ppl.err"; exit 1; }
  same "tp2 perplexity --per-token" "$DIR/tcpu_ppl.txt" "$DIR/tgpu_ppl.txt"
  mpi "$EMU" perplexity --model "$M" --file "$SRC/README.md" --max-tokens 200 --per-token --device cuda \
    --tp 2 --tp-comm nccl --threads 1 > "$DIR/ngpu_ppl.txt" 2> "$DIR/ngpu_ppl.err"
  same "tp2 perplexity --per-token over nccl" "$DIR/tcpu_ppl.txt" "$DIR/ngpu_ppl.txt"
  if cmp -s "$DIR/gpu_ppl.txt" "$DIR/tgpu_ppl.txt"; then
    echo "FAIL: tp2's logprobs equal tp1's: the split did not change the summation"
    fails=$((fails + 1))
  else
    echo "ok   tp2's logprobs differ from tp1's (sums grouped by rank)"
  fi
  # The invariant order on a model of the default model's shape cut to two
  # layers (3 KV heads: 2 + 1 on two ranks, 6 FFN chunks: 3 + 3): the
  # split's logprobs are the unsplit model's, and not the reference order's
  SMOL=$DIR/smol.gguf
  "$MKTINY" "$SMOL" --shape smol135m --layers 2 > /dev/null
  PPL=(perplexity --model "$SMOL" --file "$SRC/README.md" --max-tokens 32 --per-token --device cuda --threads 1)
  "$EMU" "${PPL[@]}" --numerics tp-invariant > "$DIR/inv1.txt" 2> "$DIR/inv1.err" ||
    { echo "FAIL invariant tp1"; cat "$DIR/inv1.err"; exit 1; }
  mpi "$EMU" "${PPL[@]}" --numerics tp-invariant --tp 2 > "$DIR/inv2.txt" 2> "$DIR/inv2.err" ||
    { echo "FAIL invariant tp2"; cat "$DIR/inv2.err"; exit 1; }
  "$EMU" "${PPL[@]}" > "$DIR/ref1.txt" 2> /dev/null
  same "tp-invariant: tp2 == tp1 (smol135m shape, 2 layers)" "$DIR/inv1.txt" "$DIR/inv2.txt"
  mpi "$EMU" "${PPL[@]}" --numerics tp-invariant --tp 2 --tp-comm nccl > "$DIR/ninv2.txt" 2> "$DIR/ninv2.err" ||
    { echo "FAIL invariant tp2 over nccl"; cat "$DIR/ninv2.err"; exit 1; }
  same "tp-invariant over nccl: tp2 == tp1" "$DIR/inv1.txt" "$DIR/ninv2.txt"
  if cmp -s "$DIR/inv1.txt" "$DIR/ref1.txt"; then
    echo "FAIL: the invariant order's logprobs equal the reference order's: no chunks were summed"
    fails=$((fails + 1))
  else
    echo "ok   the invariant order's logprobs differ from the reference order's"
  fi
  # over MPI on the tiny model (its invariant order's two chunks fall one
  # to a rank), over NCCL on the two-layer one (2 + 1 heads, 3 + 3 chunks)
  if [ -n "$TP_CHECK" ]; then tp_check mpi "$M"; tp_check nccl "$SMOL"; fi
else
  echo "# mpirun missing: the tensor-parallel checks skipped"
  [ "${CI:-}" = true ] && { echo "FAIL: mpirun missing under CI"; exit 1; }
fi

if [ "$fails" -ne 0 ]; then
  echo "$fails check(s) failed"
  exit 1
fi
echo "all checks passed"
