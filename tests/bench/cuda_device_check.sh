#!/usr/bin/env bash
# cuda_device_check.sh — the CUDA backend's checks and figures on a lent GPU,
# as one prepared script (device time is short: build here, carry, run once).
#
#   tests/bench/cuda_device_check.sh pack      here: build, bundle into .devcarry/
#   tests/bench/cuda_device_check.sh stage     there, call 1: keep the model's
#                                              first part (and llama.cpp) in /tmp
#   tests/bench/cuda_device_check.sh run       there, call 2: everything below
#   tests/bench/cuda_device_check.sh spec      there, call 3, carrying
#                                              .devcarry/bin, .devcarry/lib
#                                              and .devcarry/svc: Spec-Bench
#                                              on the GPU, then `service`
#   tests/bench/cuda_device_check.sh nccl      there, one call carrying only
#                                              .devcarry/bin and .devcarry/lib:
#                                              the NCCL backend's check alone
#   tests/bench/cuda_device_check.sh service   there, after `run` (which leaves
#                                              the model in ~/.cache), a call
#                                              carrying .devcarry/bin,
#                                              .devcarry/lib and .devcarry/svc:
#                                              a GPU verifier behind a
#                                              coordinator on loopback
#   tests/bench/cuda_device_check.sh cpu       there, after `run`, a call
#                                              carrying .devcarry/bin,
#                                              .devcarry/lib and .devcarry/lc:
#                                              the 16-core host's CPU figures
#                                              (issue 18), tandem against
#                                              llama.cpp's CPU llama-bench
#                                              (pack with LLAMA_CPU_BIN and
#                                              LLAMA_CPU_NATIVE_BIN set)
#
# Binaries and the shared libraries they need (everything ldd names but
# glibc, the C++ runtime, the CUDA driver and NCCL, which the device has)
# travel as tar.xz files (~6 MB of CLI and test binaries, mostly kernels;
# ~5 MB for the service's two; ~6 MB of libraries), unpacked under /tmp/dc
# on the device. The service and
# the CLI link gRPC, protobuf-c and OpenMPI from Debian, which the device's
# Ubuntu lacks or has in other versions.
#
# A device call carries at most 64 MiB and removes what an earlier call
# carried, so the 98 MB default model travels in two parts over two calls
# while the machine stays warm: call 1 carries .devcarry/m1 (+ .devcarry/lt,
# llama.cpp's CUDA llama-bench as llama.tar.xz, if present) and runs `stage`,
# which copies them out of the tree; call 2 carries .devcarry/m2,
# .devcarry/bin, .devcarry/lib and this script and runs `run`. `pack` ignores
# .devcarry/ in git (.git/info/exclude).
#
# `run` prints, and writes under $OUT: test_cuda (GPU logits against the CPU
# reference on tiny models and on 2,000 teacher-forced tokens of the real
# model, in the reference order and FAST; batch invariance over passes and
# row tiles; speculative identity per drafter); tandem bench engine --device
# cuda before and after llama-bench on the same file (decode, prefill 512,
# passes of 1-32 rows), each also with programmatic dependent launch off
# (TD_CUDA_PDL=1), FAST, and the row tiles forced (TD_CUDA_TILE); a
# kernel-time profile; a synthesized 7B-shaped Q4_1 model in the reference
# order and FAST; generate on CPU and GPU (same text); and comm_nccl_check,
# the NCCL backend of
# common/comm/ on a one-rank group, without a launcher (bootstrap by id) and
# under mpirun -np 1 (bootstrap over MPI): every collective bit for bit, the
# ordered sum on 1-7 parts (rc=0 passed, 77 skipped: no GPU, else failed);
# and a tensor-parallel group of two GPU ranks on the GPU (tp.log: the
# reference order's logprobs against two CPU ranks', the invariant order's
# TP 2 against its TP 1: equal sha256s).
# Figures only: nothing here fails on timing.
set -uo pipefail
cd "$(dirname "$0")/../.."
MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
SPLIT=45000000 # bytes in part 1: part 1 + llama.tar.xz (~16 MB) and part 2 + binaries (~9 MB) each fit a call

# There: the carried binaries and libraries, unpacked under /tmp/dc.
unpack() {
  mkdir -p /tmp/dc/bin /tmp/dc/lib
  tar xJf .devcarry/bin/bin.tar.xz -C /tmp/dc/bin && tar xJf .devcarry/lib/lib.tar.xz -C /tmp/dc/lib || exit 1
  if [ -f .devcarry/svc/svc.tar.xz ]; then tar xJf .devcarry/svc/svc.tar.xz -C /tmp/dc/bin || exit 1; fi
  export LD_LIBRARY_PATH=/tmp/dc/lib
  B=/tmp/dc/bin
}

case "${1:-}" in
pack)
  set -e
  grep -qx '/.devcarry/' .git/info/exclude 2>/dev/null || echo '/.devcarry/' >> .git/info/exclude
  cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DTANDEM_CUDA=ON >/dev/null
  cmake --build build-cuda -j"$(nproc)" >/dev/null
  rm -rf .devcarry/bin .devcarry/lib .devcarry/svc .devcarry/m1 .devcarry/m2
  mkdir -p .devcarry/bin .devcarry/lib .devcarry/svc .devcarry/m1 .devcarry/m2
  st=$(mktemp -d)
  # the service's two binaries travel apart (.devcarry/svc, for `spec` and
  # `service`): with them, call 2 would pass the 64 MiB a call carries
  CORE="tandem test_cuda td-mktiny comm_nccl_check" SVC="tandem-worker tandem-coordinator"
  BINS="$CORE $SVC"
  for b in $BINS; do strip -o "$st/$b" "build-cuda/$b"; done
  XZ_OPT=-9 tar cJf .devcarry/bin/bin.tar.xz -C "$st" $CORE
  XZ_OPT=-9 tar cJf .devcarry/svc/svc.tar.xz -C "$st" $SVC
  # every library the binaries load but glibc, the C++ runtime, the CUDA
  # driver and NCCL (the device's own)
  (cd build-cuda && ldd $BINS) | awk '/=> \//{print $3}' | sort -u |
    grep -v -E '/(libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|libcuda|libnccl|ld-linux[^/]*)\.so' > "$st/libs"
  tar cJhf .devcarry/lib/lib.tar.xz --transform 's,.*/,,' $(cat "$st/libs") 2>/dev/null
  rm -rf "$st"
  m="${XDG_CACHE_HOME:-$HOME/.cache}/tandem/models/$MODEL_FILE"
  head -c $SPLIT "$m" > .devcarry/m1/part
  tail -c +$((SPLIT + 1)) "$m" > .devcarry/m2/part
  [ -f ../shared/bench/spec_bench.jsonl ] && cp ../shared/bench/spec_bench.jsonl .devcarry/svc/
  # llama.cpp's CPU tools for `cpu`, where builds of them are named, with
  # the libraries they load: the llama.cpp in the llama-cpp-python 0.3.36
  # sdist with -DGGML_OPENMP=ON -DBUILD_SHARED_LIBS=ON, LLAMA_CPU_NATIVE_BIN
  # built with -DGGML_NATIVE=ON on a machine of the device host's kind
  # (AVX-512 and AMX: its repacked Q4_1 path, the fair comparison), and
  # LLAMA_CPU_BIN without it (AVX512-VNNI, no AMX: runs wherever AVX-512
  # does). docs/benchmarks.md, "llama.cpp's native CPU build".
  rm -rf .devcarry/lc && mkdir -p .devcarry/lc
  [ -f ../shared/bench/spec_bench.jsonl ] && cp ../shared/bench/spec_bench.jsonl .devcarry/lc/
  for build in "llama-cpu:${LLAMA_CPU_BIN:-}" "llama-cpu-native:${LLAMA_CPU_NATIVE_BIN:-}"; do
    name=${build%%:*} dir=${build#*:}
    [ -n "$dir" ] && [ -x "$dir/llama-bench" ] || continue
    libs=$(ldd "$dir/llama-bench" 2>/dev/null | awk '/=> \//{print $3}' | sort -u |
      grep -v -E '/(libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so')
    tar cJhf ".devcarry/lc/$name.tar.xz" --transform 's,.*/,,' "$dir/llama-bench" $libs 2>/dev/null
  done
  du -sh .devcarry/*
  ;;
stage)
  mkdir -p /tmp/keep && cp .devcarry/m1/part /tmp/keep/m1part
  [ -f .devcarry/lt/llama.tar.xz ] && tar xJf .devcarry/lt/llama.tar.xz -C /tmp/keep
  ls /tmp/keep
  ;;
run)
  OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
  unpack
  L=/tmp/keep/llama
  mkdir -p /tmp/bd ~/.cache/tandem/models && cp $B/td-mktiny /tmp/bd/
  M=~/.cache/tandem/models/$MODEL_FILE
  cat /tmp/keep/m1part .devcarry/m2/part > $M && sha256sum $M | cut -c1-16
  ($B/td-mktiny /tmp/7b.gguf --shape llama7b --type Q4_1 > /dev/null; echo "7B-shaped model made: rc=$?"
   $B/td-mktiny /tmp/7bk.gguf --shape llama7b --type Q4_K_M > /dev/null; echo "7B-shaped Q4_K_M made: rc=$?") &
  export TD_BINARY_DIR=/tmp/bd TD_SOURCE_DIR=$PWD
  timeout 300 $B/test_cuda 2>&1 | tee $OUT/test_cuda.log | grep -E "^#|OK|FAIL|ERROR|LINE"
  LB() { if [ -x $L/llama-bench ]; then (cd $L && LD_LIBRARY_PATH=$L:$LD_LIBRARY_PATH timeout 120 ./llama-bench "$@"); fi; }
  # TD_CUDA_PDL=1: programmatic dependent launch (off by default until
  # measured here); TD_CUDA_TILE: rows per matmul tile forced, for the
  # choice by rows (cuda_matmul.cu). Same bits every way (test_cuda).
  {
    echo "== tandem (before)"; timeout 60 $B/tandem bench engine --device cuda --repeats 5
    echo "== tandem, TD_CUDA_PDL=1"; TD_CUDA_PDL=1 timeout 60 $B/tandem bench engine --device cuda --repeats 5
    echo "== llama.cpp"; LB -m $M -ngl 99 -fa 0 -p 512 -n 128 -r 5; LB -m $M -ngl 99 -fa 0 -p 1,2,4,8,16,32 -n 0 -r 5
    echo "== tandem (after)"; timeout 60 $B/tandem bench engine --device cuda --repeats 5
    echo "== tandem, TD_CUDA_PDL=1 (after)"; TD_CUDA_PDL=1 timeout 60 $B/tandem bench engine --device cuda --repeats 5
    echo "== tandem, --numerics fast"; timeout 60 $B/tandem bench engine --device cuda --repeats 5 --numerics fast
    echo "== tandem, --numerics fast, TD_CUDA_KSPLIT=4"
    TD_CUDA_KSPLIT=4 timeout 60 $B/tandem bench engine --device cuda --repeats 5 --numerics fast
    for t in 2 4 8 1:4 1:8 2:8; do
      echo "== tandem, TD_CUDA_TILE=$t"; TD_CUDA_TILE=$t timeout 60 $B/tandem bench engine --device cuda --repeats 3
    done
    echo "== tandem, 512-token context"; timeout 60 $B/tandem bench engine --device cuda --repeats 5 --context 512
    # the summaries' and scores' kernels against the copy of the logits they save
    echo "== tandem, by what a pass brings back"; timeout 60 $B/tandem bench engine --device cuda --repeats 3 --outputs
    TD_CUDA_PROFILE=1 timeout 60 $B/tandem bench engine --device cuda --repeats 1 | grep kernel
  } 2>&1 | tee $OUT/bench.log
  bash tests/bench/cuda_device_check.sh nccl # cwd is the repo root (cd above)
  wait
  {
    B7() { local m=$1; shift; timeout 120 $B/tandem bench engine --device cuda --model "$m" --repeats 3 "$@"; }
    echo "== 7B-shaped, synthetic weights, reference order"; B7 /tmp/7b.gguf
    echo "== 7B-shaped, --numerics fast"; B7 /tmp/7b.gguf --numerics fast
    echo "== 7B-shaped, --numerics fast, TD_CUDA_TILE=8"; TD_CUDA_TILE=8 B7 /tmp/7b.gguf --numerics fast
    # the K-quant kernels (cuda_kquant.cu) on the usual deployment's mix,
    # beside llama.cpp's on the same file
    echo "== 7B-shaped Q4_K_M, synthetic weights"; B7 /tmp/7bk.gguf
    echo "== llama.cpp, 7B-shaped Q4_K_M"; LB -m /tmp/7bk.gguf -ngl 99 -fa 0 -p 1,2,4,8,16,32 -n 32 -r 3
  } 2>&1 | tee $OUT/bench7b.log
  P="Explain speculative decoding in two sentences."
  # seeded rows are picked from the device's summaries (cuda_sample.cu): the
  # same text as the CPU's reference order, plain and speculative; rejection
  # mode's verdicts are taken there too (the last two: the same text)
  S="--temperature 0.8 --top-k 40 --top-p 0.95 --seed 7"
  for dev in "--numerics reference" "--device cuda" "--device cuda --draft auto" "--device cuda --numerics fast" \
    "--numerics reference $S" "--device cuda $S" "--device cuda --draft auto $S" \
    "--numerics reference --draft lookup --draft-mode rejection $S" \
    "--device cuda --draft lookup --draft-mode rejection $S"; do
    timeout 60 $B/tandem generate --chat --prompt "$P" --max-tokens 96 $dev > /tmp/bd/o.txt 2>/tmp/bd/e.txt
    echo "rc=$? [$dev] text sha256 $(sha256sum < /tmp/bd/o.txt | cut -c1-16)"; cat /tmp/bd/e.txt
  done 2>&1 | tee $OUT/generate.log
  # scoring on the device (cuda_sample.cu's k_score): each token's logprob
  # bit for bit the CPU's in the reference order; then the time of both
  for dev in "--numerics reference" "--device cuda"; do
    timeout 120 $B/tandem perplexity --model $M --file docs/engine.md --max-tokens 2048 --per-token $dev \
      > /tmp/bd/p.txt 2>/tmp/bd/e.txt
    echo "rc=$? [$dev] per-token sha256 $(sha256sum < /tmp/bd/p.txt | cut -c1-16) $(tail -1 /tmp/bd/p.txt)"
    cat /tmp/bd/e.txt
  done 2>&1 | tee $OUT/perplexity.log
  # a tensor-parallel group of two GPU ranks on the one GPU (over MPI; NCCL
  # refuses two ranks on one device): the reference order's per-token
  # logprobs equal two CPU ranks', the invariant order's TP 2 equals its TP 1
  if command -v mpirun > /dev/null; then
    PT="perplexity --model $M --file docs/engine.md --max-tokens 512 --per-token"
    for run in "cpu2|mpirun --allow-run-as-root -np 2 $B/tandem $PT --tp 2 --numerics reference" \
      "gpu2|mpirun --allow-run-as-root -np 2 $B/tandem $PT --tp 2 --device cuda" \
      "inv1|$B/tandem $PT --device cuda --numerics tp-invariant" \
      "inv2|mpirun --allow-run-as-root -np 2 $B/tandem $PT --tp 2 --device cuda --numerics tp-invariant"; do
      name=${run%%|*}
      timeout 120 ${run#*|} > /tmp/bd/$name.txt 2>/tmp/bd/e.txt
      echo "rc=$? [$name] per-token sha256 $(sha256sum < /tmp/bd/$name.txt | cut -c1-16) $(tail -1 /tmp/bd/$name.txt)"
      tail -1 /tmp/bd/e.txt
    done 2>&1 | tee $OUT/tp.log
  else
    echo "== no mpirun: the GPU group not checked" | tee $OUT/tp.log
  fi
  ;;
spec)
  # there, after `run` in the same warm session (it leaves the model), a
  # call carrying .devcarry/bin, .devcarry/lib and .devcarry/svc (the
  # service's binaries, the prompts): Spec-Bench on the GPU, then `service`
  OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
  unpack
  [ -f .devcarry/svc/spec_bench.jsonl ] && timeout 150 $B/tandem bench spec --device cuda \
    --prompts .devcarry/svc/spec_bench.jsonl --limit 12 --max-tokens 128 --draft lookup --draft auto 2>&1 |
    tee $OUT/spec.log | tail -10
  bash tests/bench/cuda_device_check.sh service
  ;;
nccl)
  # NCCL's own diagnostics on failure only (NCCL_DEBUG=WARN); the library is
  # the device's libnccl.so.2 (linked dynamically, never carried)
  OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
  unpack
  export NCCL_DEBUG=WARN
  {
    echo "== comm_nccl_check (bootstrap by id)"; timeout 90 $B/comm_nccl_check; echo "rc=$?"
    if command -v mpirun > /dev/null; then
      echo "== comm_nccl_check --mpi (mpirun -np 1)"
      timeout 90 mpirun --allow-run-as-root -np 1 $B/comm_nccl_check --mpi; echo "rc=$?"
    else
      echo "== no mpirun: the MPI bootstrap not checked"
    fi
  } 2>&1 | tee $OUT/comm_nccl.log
  ;;
service)
  # A GPU verifier (tandem-worker --device cuda) behind a coordinator that
  # knows it statically (no etcd on the device), on loopback: generation
  # through the service against the same generation in-process on the GPU
  # (same text, greedy), plain and with speculation; processes stopped by PID.
  OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
  unpack
  M=~/.cache/tandem/models/$MODEL_FILE
  [ -f "$M" ] || { echo "no $M: run \`run\` first in this warm session"; exit 1; }
  $B/tandem-worker --role verifier --model "$M" --listen 127.0.0.1:7101 --device cuda --threads 4 \
    > "$OUT/worker.log" 2>&1 & WP=$!
  ready() { # ADDR: SERVING within 120 s while the worker lives
    for i in $(seq 120); do
      $B/tandem health --server "$1" > /dev/null 2>&1 && return 0
      kill -0 $WP 2> /dev/null || return 1
      sleep 1
    done
    return 1
  }
  if ! ready 127.0.0.1:7101; then
    echo "the GPU worker did not come up:"; tail -5 "$OUT/worker.log"; kill -KILL $WP 2> /dev/null; exit 1
  fi
  $B/tandem-coordinator --listen 127.0.0.1:7100 --worker verifier=127.0.0.1:7101 > "$OUT/coordinator.log" 2>&1 & CP=$!
  ready 127.0.0.1:7100 || echo "the coordinator is not SERVING"
  {
    grep -m1 fingerprint "$OUT/worker.log"
    P="Explain speculative decoding in two sentences."
    for d in none auto; do
      timeout 60 $B/tandem generate --chat --prompt "$P" --max-tokens 96 --device cuda --draft $d > /tmp/dc/local.txt 2>/dev/null
      lrc=$?
      timeout 60 $B/tandem generate --server 127.0.0.1:7100 --chat --prompt "$P" --max-tokens 96 --draft $d \
        > /tmp/dc/svc.txt 2> /tmp/dc/svc.err
      src=$?
      same=DIFFERENT
      [ $lrc -eq 0 ] && [ $src -eq 0 ] && [ -s /tmp/dc/svc.txt ] && cmp -s /tmp/dc/local.txt /tmp/dc/svc.txt && same=IDENTICAL
      echo "draft $d: local rc=$lrc, service rc=$src; text sha256 $(sha256sum < /tmp/dc/local.txt | cut -c1-16) / $(sha256sum < /tmp/dc/svc.txt | cut -c1-16): $same"
      tail -2 /tmp/dc/svc.err
    done
  } 2>&1 | tee "$OUT/service.log"
  kill -TERM $CP $WP
  wait $CP; crc=$?
  wait $WP; wrc=$?
  echo "stopped by SIGTERM (each drains and exits 0): coordinator rc=$crc, worker rc=$wrc"
  tail -3 "$OUT/worker.log"
  ;;
cpu)
  # The lent machine's 16-core host is the only many-core CPU within reach
  # (issue 18). tandem's CPU pass per thread count, phases against jobs
  # side by side, with the planned matmul balance; llama.cpp's CPU
  # llama-bench at the same counts between two tandem runs (decode, prefill
  # 512, passes of 1-16 rows); tandem pinned; where the threads' time goes
  # per step (--profile); the kernels against the machine's peak and
  # bandwidth; where AMX runs, the engine and kernels once more without it;
  # Spec-Bench at 16 threads.
  OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
  unpack
  M=~/.cache/tandem/models/$MODEL_FILE
  [ -f "$M" ] || { echo "no $M: run \`run\` first in this warm session"; exit 1; }
  n=$(nproc); T=1; for t in 2 4 8 16 32 64; do [ $t -le $n ] && T=$T,$t; done
  LCB() { # NAME llama-bench arguments...: one carried llama.cpp CPU build
    local d=/tmp/dc/$1; shift
    [ -f .devcarry/lc/$(basename $d).tar.xz ] || { echo "(not carried)"; return; }
    mkdir -p $d && tar xJf .devcarry/lc/$(basename $d).tar.xz -C $d &&
      LD_LIBRARY_PATH=$d:$LD_LIBRARY_PATH timeout 150 $d/llama-bench "$@"
  }
  {
    lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Core|Socket|L3)'
    echo "== tandem, threads $T, jobs then phases"; timeout 200 $B/tandem bench engine --threads $T --repeats 5 --schedule both
    for lc in llama-cpu-native llama-cpu; do
      # decode on its own: where a VM lists AMX but faults on it (as the
      # development VM does), the prompt runs die and decode still reports
      echo "== llama.cpp CPU, $lc"; LCB $lc -m $M -t $T -p 0 -n 128 -r 3
      LCB $lc -m $M -t $T -p 512 -n 0 -r 3; LCB $lc -m $M -t $T -p 1,2,4,8,16 -n 0 -r 3
    done
    echo "== tandem (after)"; timeout 150 $B/tandem bench engine --threads $T --repeats 5
    echo "== tandem pinned"; timeout 100 $B/tandem bench engine --threads ${T#1,2,4,} --repeats 5 --pin
    echo "== where the threads' time goes"; timeout 150 $B/tandem bench engine --threads $T --repeats 1 --profile |
      grep -E 'passes|busiest'
    echo "== kernels"; timeout 100 $B/tandem bench kernels --formats Q4_1,Q8_0 --threads $n --repeats 3
    # where tandem takes AMX tiles (the kernels line says so), the same
    # without them, for the side by side
    if $B/tandem bench kernels --formats Q4_1 --no-stream --repeats 1 2>/dev/null | grep -q AMX; then
      echo "== tandem without AMX (TD_KERNELS=avx512)"
      TD_KERNELS=avx512 timeout 120 $B/tandem bench engine --threads $T --repeats 3
      TD_KERNELS=avx512 timeout 60 $B/tandem bench kernels --formats Q4_1,Q8_0 --no-stream --threads $n --repeats 3
    fi
  } 2>&1 | tee $OUT/cpu.log
  S=.devcarry/lc/spec_bench.jsonl
  [ -f "$S" ] && timeout 200 $B/tandem bench spec --prompts "$S" --limit 12 --threads $n --max-tokens 256 \
    --draft lookup --draft auto 2>&1 | tee $OUT/cpu_spec.log | tail -8
  ;;
*)
  sed -n '2,50p' "$0"; exit 2 ;;
esac
