#!/usr/bin/env bash
# test.sh — every test: the unit and real-model tests (CTest), the same unit
# tests under AddressSanitizer + UndefinedBehaviorSanitizer (asserts live: no
# build type defines NDEBUG), the Helm chart's checks (tests/helm/run.sh, a
# venv of PyPI tools under build/), the unit tests that use threads under
# ThreadSanitizer, the libFuzzer targets (GGUF reader, tokenizers, wire
# decoding, every handler of worker and coordinator, the score JSONL reader)
# for a bounded time, the CLI integration checks, and the CUDA build where the
# toolkit is installed.
# Expects scripts/setup.sh to have run (packages, model, build/).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=$(nproc)
FUZZ_SECONDS=${TD_FUZZ_SECONDS:-45}

step() { printf '\n== %s ==\n' "$*"; }

step "sanitizer build (ASan + UBSan): unit tests"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTANDEM_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$JOBS" >/dev/null
# (the fault suite and the soak run once, in the release build below: under
# ASan they would take several times as long and test nothing new)
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -LE "model|faults" -j"$JOBS"

step "ThreadSanitizer build: the unit tests that use threads"
# test_threads: one model under two contexts on two threads, one pool under
# two callers; test_util: the pool; test_model and test_spec: passes on a
# two-thread pool; test_metrics: counters from several threads, the HTTP
# server's thread; test_sample_block: the device sampler's block code on 256
# host threads, where a shared-memory hand-over without a barrier is a race
TSAN_TESTS="test_threads test_util test_model test_spec test_metrics test_sample_block"
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTANDEM_TSAN=ON >/dev/null
cmake --build build-tsan -j"$JOBS" --target $TSAN_TESTS >/dev/null
# (test_spec's rejection-mode case is a statistical test of 6,000 short runs
# on the same pool the other cases use: four minutes under TSan that find
# nothing the nine others do not; it runs in the other two builds)
TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" TD_TEST_SKIP=rejection_mode_keeps_distribution \
  ctest --test-dir build-tsan --output-on-failure -j"$JOBS" -R "^($(echo $TSAN_TESTS | tr ' ' '|'))\$"

# The handler targets (issue 17 §3) have budgets of their own, 2 minutes
# together: fuzz_worker runs model passes on most inputs, the other two are
# fast. TD_FUZZ_SECONDS, when set, applies to every target.
fuzz_seconds() {
  if [ -n "${TD_FUZZ_SECONDS:-}" ]; then echo "$TD_FUZZ_SECONDS"; return; fi
  case "$1" in
    fuzz_worker) echo 60 ;;
    fuzz_coordinator) echo 40 ;;
    fuzz_score_input) echo 20 ;;
    *) echo "$FUZZ_SECONDS" ;;
  esac
}
step "fuzz targets (clang libFuzzer, ${FUZZ_SECONDS}s each, the handler targets 20-60s; committed seeds in tests/fuzz/corpus)"
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DTANDEM_FUZZ=ON -DTANDEM_TESTS=OFF >/dev/null
cmake --build build-fuzz -j"$JOBS" >/dev/null
# A target runs on one core: $JOBS of them at a time, each with its whole
# budget, their output kept apart and printed in order afterwards.
fuzz_one() { # name: its seeds, then its run, output in build-fuzz/logs/NAME
  local name=$1 corpus="build-fuzz/corpus-$1"
  mkdir -p "$corpus"
  if [ -x "tests/fuzz/make_corpus.sh" ]; then tests/fuzz/make_corpus.sh "$name" "$corpus" build; fi
  # -timeout: an input that takes this long is a hang, and fails the run
  "build-fuzz/$name" -max_total_time="$(fuzz_seconds "$name")" -timeout=60 -rss_limit_mb=2048 \
    -print_final_stats=1 "$corpus" > "build-fuzz/logs/$name" 2>&1
}
mkdir -p build-fuzz/logs
running=0 fuzz_failed=0
for fz in build-fuzz/fuzz_*; do
  [ -x "$fz" ] || continue
  fuzz_one "$(basename "$fz")" &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then wait -n || fuzz_failed=1; running=$((running - 1)); fi
done
while [ "$running" -gt 0 ]; do wait -n || fuzz_failed=1; running=$((running - 1)); done
for fz in build-fuzz/fuzz_*; do
  [ -x "$fz" ] || continue
  name=$(basename "$fz")
  echo "-- $name"
  # a failed target's whole report (the input, the stack), else its stats
  if grep -q -E "ERROR: |==[0-9]+==|deadly signal|Test unit written" "build-fuzz/logs/$name"; then
    tail -n 60 "build-fuzz/logs/$name"
  else
    tail -n 4 "build-fuzz/logs/$name"
  fi
done
[ "$fuzz_failed" -eq 0 ] || { echo "a fuzz target failed (its report above)"; exit 1; }

step "CLI integration"
TD_MKTINY=build/td-mktiny tests/integration/test_cli.sh build/tandem

if [ -x /usr/local/cuda/bin/nvcc ]; then
  # The CUDA backend compiles wherever the toolkit is, so it never rots;
  # test_cuda checks the host side everywhere and the kernels where a GPU is;
  # so do test_comm and comm_nccl_check for the NCCL backend (the check
  # exits 77, skipped, without a GPU).
  step "CUDA build (-DTANDEM_CUDA=ON): compile, test_cuda, the NCCL backend"
  cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DTANDEM_CUDA=ON >/dev/null
  cmake --build build-cuda -j"$JOBS" >/dev/null
  ctest --test-dir build-cuda --output-on-failure -R '^(test_cuda|test_cuda_host|test_comm|comm_nccl_check|comm_nccl_mpi_np1)$'
else
  step "CUDA build skipped: no /usr/local/cuda/bin/nvcc"
fi

step "release build: all tests, including the real-model reference tests"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$JOBS" >/dev/null
# label long: the real model on the CUDA emulator (~10 minutes; run it with
# ctest --test-dir build -L long). Two at a time: the tests that start
# servers with short leases (service, gateway, faults) are RUN_SERIAL, so
# they run alone and never share the cores.
ctest --test-dir build --output-on-failure -LE long -j"$JOBS"

step "Helm chart: rendered and linted by Helm's engine, validated against the Kubernetes schemas, its pods run on loopback"
tests/helm/run.sh

step "Image: the packages its runtime stage installs (deploy/docker/runtime-packages.sh)"
tests/integration/test_runtime_packages.sh build $([ -x build-cuda/tandem-worker ] && echo build-cuda)
