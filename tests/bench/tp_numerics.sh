#!/usr/bin/env bash
# tp_numerics.sh — how far TP=N's logits are from TP=1's in each numerics
# order: teacher-forced over TOKENS tokens of tests/fixtures/english.txt (in
# passes of 250 rows, every row's logits), max and mean absolute difference
# and argmax agreement. tp-invariant must show 0 (tp_mpi_check asserts it);
# fast and reference regroup the split projections' sums by rank.
# usage: tests/bench/tp_numerics.sh [BUILD_DIR] [N] [TOKENS]
set -euo pipefail
BUILD=${1:-build}; N=${2:-2}; TOKENS=${3:-2000}
for mode in fast reference tp-invariant; do
  nice -n 10 mpirun --allow-run-as-root --oversubscribe -np "$N" "$BUILD/tp_mpi_check" "$N" compare "$mode" "$TOKENS"
done
