#!/usr/bin/env python3
"""Reference-side benchmark: llama.cpp (via llama-cpp-python) on CPU.

Measures, for each thread count:
  decode   64-token prompt (untimed), then 128 tokens generated greedily one
           at a time; only the 128 single-token llama_decode calls are timed
           -> tokens/s
  prefill  one 512-token prompt evaluated in one llama_decode (n_batch 512,
           logits for the last position only) -> tokens/s
  verify   (unless --no-verify) one llama_decode over k = 1,2,4,8,16 tokens
           after a 64-token prefix, logits requested for all k positions
           (what a speculative verify step needs) -> ms, and ratio to k = 1

Each measurement is repeated --repeats times (after one untimed warm-up
round), interleaved across thread counts, and the median is reported (the
best sample too; the machine is shared and noisy). Prompt tokens are the first 64 / 512 tokens of
tests/fixtures/english.txt tokenized with the model's default (no BOS for
SmolLM2), the same source tandem's benchmark uses.

llama.cpp options are left plain: mmap on, KV cache f16, flash attention
off (llama-cpp-python's default), n_ubatch 512; they are printed.

Prints one JSON object (medians; all samples with --samples) and a human
summary line per thread count. Timings only: nothing here passes or fails.

Usage:
  ~/.cache/tandem/refvenv/bin/python tests/bench/llamacpp_bench.py \
      --model ~/.cache/tandem/models/SmolLM2-135M-Instruct.Q4_1.gguf \
      --threads 1,2 --repeats 5
"""

import argparse
import ctypes
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import llama_cpp

HERE = os.path.dirname(os.path.abspath(__file__))
ENGLISH = os.path.normpath(os.path.join(HERE, "..", "fixtures", "english.txt"))

N_PROMPT_DECODE = 64
N_DECODE = 128
N_PREFILL = 512
VERIFY_PREFIX = 64
VERIFY_KS = [1, 2, 4, 8, 16]
N_CTX = 1024
N_BATCH = 512
N_UBATCH = 512


class Runner:
    """Thin wrapper over the llama.cpp C API for one context."""

    def __init__(self, model, threads):
        self.llm = llama_cpp.Llama(
            model_path=model, n_ctx=N_CTX, n_batch=N_BATCH, n_ubatch=N_UBATCH,
            n_threads=threads, n_threads_batch=threads, use_mmap=True,
            logits_all=False, flash_attn=False, verbose=False)
        self.ctx = self.llm._ctx.ctx
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.n_vocab = self.llm.n_vocab()
        self.batch = llama_cpp.llama_batch_init(N_BATCH, 0, 1)
        self.threads = threads

    def close(self):
        llama_cpp.llama_batch_free(self.batch)
        self.llm.close()

    def clear(self):
        llama_cpp.llama_memory_clear(self.mem, True)

    def truncate(self, n_past):
        llama_cpp.llama_memory_seq_rm(self.mem, 0, n_past, -1)

    def decode(self, tokens, n_past, all_logits=False):
        b = self.batch
        n = len(tokens)
        b.n_tokens = n
        for i, t in enumerate(tokens):
            b.token[i] = t
            b.pos[i] = n_past + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = all_logits
        b.logits[n - 1] = True
        t0 = time.perf_counter()
        rc = llama_cpp.llama_decode(self.ctx, b)
        llama_cpp.llama_synchronize(self.ctx)
        dt = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        return dt

    def argmax_last(self):
        p = llama_cpp.llama_get_logits_ith(self.ctx, -1)
        row = np.ctypeslib.as_array(p, shape=(self.n_vocab,))
        return int(np.argmax(row))


def bench_decode(rn, prompt):
    rn.clear()
    rn.decode(prompt, 0)
    n_past = len(prompt)
    total = 0.0
    for _ in range(N_DECODE):
        tok = rn.argmax_last()
        total += rn.decode([tok], n_past)
        n_past += 1
    return N_DECODE / total


def bench_prefill(rn, prompt):
    rn.clear()
    dt = rn.decode(prompt, 0)
    return len(prompt) / dt


def bench_verify(rn, prefix, cont, k):
    rn.truncate(len(prefix))
    return rn.decode(cont[:k], len(prefix), all_logits=True)


def median(xs):
    return statistics.median(xs)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.expanduser(
        "~/.cache/tandem/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", default="1,2",
                    help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--text", default=ENGLISH,
                    help="prompt text source (default tests/fixtures/english.txt)")
    ap.add_argument("--no-verify", action="store_true",
                    help="skip the verification-cost measurement")
    ap.add_argument("--samples", action="store_true",
                    help="also print every sample, not only medians")
    args = ap.parse_args()
    threads = [int(x) for x in args.threads.split(",") if x.strip()]

    llama_cpp.llama_backend_init()
    with open(args.text, "rb") as f:
        text = f.read()

    result = {
        "reference": "llama.cpp via llama-cpp-python",
        "llama_cpp_version": llama_cpp.__version__,
        "model": os.path.basename(args.model),
        "text": os.path.relpath(args.text, os.path.join(HERE, "..", "..")),
        "machine": {"platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count()},
        "options": {"n_ctx": N_CTX, "n_batch": N_BATCH, "n_ubatch": N_UBATCH,
                    "flash_attn": False, "kv_type": "f16", "use_mmap": True,
                    "n_gpu_layers": 0, "add_bos": None},
        "method": {
            "decode": f"{N_PROMPT_DECODE}-token prompt, then {N_DECODE} greedy "
                      "single-token llama_decode calls (timed, summed)",
            "prefill": f"one {N_PREFILL}-token llama_decode, last logits only",
            "verify": f"one llama_decode of k tokens after a {VERIFY_PREFIX}-"
                      "token prefix, logits for all k",
            "repeats": args.repeats,
            "statistic": "median (and best) over repeats; one warm-up round; "
                         "repeats interleaved across thread counts",
        },
        "runs": [],
    }
    sysinfo = llama_cpp.llama_print_system_info()
    result["system_info"] = sysinfo.decode() if isinstance(sysinfo, bytes) else str(sysinfo)

    # One context per thread count, all alive at once; the repeats are
    # interleaved across thread counts (rep 1: t=1, t=2; rep 2: t=1, t=2; ...)
    # so that load from other processes on this shared machine spreads over
    # all configurations instead of hitting one of them.
    runners, data = [], []
    for t in threads:
        rn = Runner(args.model, t)
        vocab = llama_cpp.llama_model_get_vocab(rn.llm._model.model)
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        result["options"]["add_bos"] = add_bos
        ids = rn.llm.tokenize(text, add_bos=add_bos, special=False)
        need = max(N_PREFILL, VERIFY_PREFIX + max(VERIFY_KS))
        if len(ids) < need:
            sys.exit(f"prompt text too short: {len(ids)} tokens < {need}")
        runners.append(rn)
        data.append({"p64": ids[:N_PROMPT_DECODE], "p512": ids[:N_PREFILL],
                     "cont": ids[VERIFY_PREFIX:VERIFY_PREFIX + max(VERIFY_KS)],
                     "dec": [], "pre": [],
                     "ver": {k: [] for k in VERIFY_KS}})

    def one_round(rn, d, keep):
        dec = bench_decode(rn, d["p64"])
        pre = bench_prefill(rn, d["p512"])
        ver = {}
        if not args.no_verify:
            rn.clear()
            rn.decode(d["p64"][:VERIFY_PREFIX], 0)
            for k in VERIFY_KS:
                ver[k] = bench_verify(rn, d["p64"], d["cont"], k)
        if keep:
            d["dec"].append(dec)
            d["pre"].append(pre)
            for k, v in ver.items():
                d["ver"][k].append(v)

    result["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    for rep in range(args.repeats + 1):          # round 0 is the warm-up
        for rn, d in zip(runners, data):
            one_round(rn, d, keep=rep > 0)
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]

    human = []
    for t, rn, d in zip(threads, runners, data):
        run = {"threads": t,
               "decode_tok_s": round(median(d["dec"]), 2),
               "prefill_tok_s": round(median(d["pre"]), 2),
               "decode_tok_s_best": round(max(d["dec"]), 2),
               "prefill_tok_s_best": round(max(d["pre"]), 2)}
        if args.samples:
            run["decode_samples"] = [round(x, 2) for x in d["dec"]]
            run["prefill_samples"] = [round(x, 2) for x in d["pre"]]
        if not args.no_verify:
            ver = d["ver"]
            base = median(ver[1])
            run["verify_ms"] = {str(k): round(1e3 * median(v), 3)
                                for k, v in ver.items()}
            run["verify_ratio_to_k1"] = {str(k): round(median(v) / base, 3)
                                         for k, v in ver.items()}
            bbase = min(ver[1])
            run["verify_ms_best"] = {str(k): round(1e3 * min(v), 3)
                                     for k, v in ver.items()}
            run["verify_ratio_to_k1_best"] = {str(k): round(min(v) / bbase, 3)
                                              for k, v in ver.items()}
            if args.samples:
                run["verify_samples_ms"] = {
                    str(k): [round(1e3 * x, 3) for x in v]
                    for k, v in ver.items()}
        result["runs"].append(run)
        line = (f"llama.cpp {llama_cpp.__version__} threads={t}: decode "
                f"{run['decode_tok_s']:.1f} tok/s, prefill "
                f"{run['prefill_tok_s']:.1f} tok/s (medians of "
                f"{args.repeats})")
        if "verify_ratio_to_k1" in run:
            line += ", verify k=1/2/4/8/16 " + "/".join(
                f"{run['verify_ms'][str(k)]:.2f}" for k in VERIFY_KS) + \
                " ms (x" + "/".join(
                f"{run['verify_ratio_to_k1'][str(k)]:.2f}"
                for k in VERIFY_KS) + ")"
        human.append(line)
    for rn in runners:
        rn.close()

    print(json.dumps(result, indent=2))
    for line in human:
        print(line)


if __name__ == "__main__":
    main()
