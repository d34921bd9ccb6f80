#!/usr/bin/env bash
# avx512_device_check.sh BUNDLE OUTDIR — runs the CPU kernels natively on a
# machine with AVX-512 (this project's dev machine has none): the unit tests
# that exercise the kernel tables, then `tandem bench engine` with the
# AVX512-VNNI set against the AVX2 set (TD_KERNELS=avx2) side by side, on a
# model with the default model's shapes and synthetic weights
# (synth_weights.py; the model file itself is too large to travel).
#
# BUNDLE holds bin/ (tandem and the test programs, built on the dev machine),
# lib/ (their shared libraries) and header.bin (synth_weights.py header of the
# default model). Run from the repository root.
set -u
B=$1 OUT=$2
export LD_LIBRARY_PATH=$PWD/$B/lib
# the tests run td-mktiny from the build folder they were built in
D=$(strings "$B/bin/test_model" 2>/dev/null | grep -m1 -x '/[^ ]*/build' || echo /work/main/build)
mkdir -p "$D" && cp "$B/bin/td-mktiny" "$D/"
log() { echo "== $*"; }

log cpu
grep -m1 "model name" /proc/cpuinfo
nproc
grep -o -w 'avx512[a-z_0-9]*\|avx_vnni\|amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' '
echo

for t in test_quant test_quant_vnni test_model test_spec; do
    log "$t (native kernels)"
    timeout 120 "$B/bin/$t" > "$OUT/$t.log" 2>&1
    echo "rc=$? $(grep -c '\[       OK \]' "$OUT/$t.log") ok, $(grep -c FAILED "$OUT/$t.log") failed lines"
done
log "test_quant with TD_KERNELS=avx2"
TD_KERNELS=avx2 timeout 60 "$B/bin/test_quant" 2>&1 | tail -1

python3 tests/bench/synth_weights.py fill "$B/header.bin" /tmp/synth.gguf || exit 1
for n in fast reference; do
    for k in avx2 native; do
        log "bench engine, kernels $k, numerics $n"
        if [ "$k" = avx2 ]; then export TD_KERNELS=avx2; else unset TD_KERNELS; fi
        timeout 100 stdbuf -oL "$B/bin/tandem" bench engine --model /tmp/synth.gguf --threads 1,2,8 --repeats 3 --numerics "$n" 2>&1
    done
done
unset TD_KERNELS
log "generate (synthetic weights: text is meaningless), native kernels"
"$B/bin/tandem" generate --model /tmp/synth.gguf --prompt "Hello" --max-tokens 32 --threads 2 >/dev/null
