#!/usr/bin/env python3
"""Prompt lookup: tandem against llama.cpp's own C++ `llama-lookup`.

lookup_vs_llamacpp.py compares with llama-cpp-python's Python-side lookup
decoding, whose per-token Python work flatters any C engine. This one runs
llama.cpp's `llama-lookup` example program (built from the llama.cpp source
vendored in PyPI's llama-cpp-python sdist; see docs/benchmarks.md for the
build lines) on the same questions and prompts:

  tandem     plain    `tandem generate --draft none`
  tandem     lookup   `tandem generate --draft lookup`
  llama.cpp  lookup   `llama-lookup --temp 0 --spec-draft-n-max K`, per K in --num-pred

Questions are the first turns of every (lines/N)-th Spec-Bench line, in
SmolLM2's ChatML template, answered greedily up to --max-tokens tokens, every
configuration on a question before the next (interleaved, so machine noise
hits all alike). Reported: the median over questions of each configuration's
decode tokens/s (its own summary line: tandem's "decode ... tok/s", llama-lookup's
"decoded N tokens in S seconds"), and the ratios. Timings only: nothing here
passes or fails; needs no Python package beyond the standard library.

Usage:
  python3 tests/bench/llama_lookup_cli.py --tandem build/tandem \
      --llama-lookup /path/to/llama-lookup --prompts ../shared/bench/spec_bench.jsonl --limit 12
"""

import argparse
import os
import re
import statistics
import subprocess
import sys

from specbench_prompts import DEFAULT_MODEL, chatml, pick_questions

TANDEM_SUMMARY = re.compile(r"generated (\d+) tokens, prefill ([\d.]+) tok/s, decode ([\d.]+) tok/s")
LLAMA_DECODED = re.compile(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds, speed:\s+([\d.]+) t/s")
LLAMA_ACCEPT = re.compile(r"n_drafted\s+=\s+(\d+)[\s\S]*n_accept\s+=\s+(\d+)")


def run_tandem(args, text, draft):
    cmd = [args.tandem, "generate", "--model", args.model, "--prompt", text, "--max-tokens",
           str(args.max_tokens), "--threads", str(args.threads), "--draft", draft]
    p = subprocess.run(cmd, capture_output=True, timeout=600)
    err = p.stderr.decode("utf-8", "replace")
    m = TANDEM_SUMMARY.search(err)
    if p.returncode != 0 or not m:
        sys.exit(f"tandem failed (exit {p.returncode}):\n{err[-2000:]}")
    return float(m.group(3)), int(m.group(1))


def run_llama_lookup(args, text, k):
    cmd = [args.llama_lookup, "-m", args.model, "-p", text, "-n", str(args.max_tokens), "-t", str(args.threads),
           "--temp", "0", "--spec-draft-n-max", str(k), "-c", "4096"]
    p = subprocess.run(cmd, capture_output=True, timeout=600)
    out = p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")
    m = LLAMA_DECODED.search(out)
    if p.returncode != 0 or not m:
        sys.exit(f"llama-lookup failed (exit {p.returncode}):\n{out[-2000:]}")
    a = LLAMA_ACCEPT.search(out)
    accepted = f"{a.group(2)}/{a.group(1)}" if a else "?"
    return float(m.group(3)), int(m.group(1)), accepted


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tandem", required=True)
    ap.add_argument("--llama-lookup", required=True)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--limit", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--num-pred", default="3,8", help="llama-lookup draft sizes, comma list (default 3,8)")
    args = ap.parse_args()
    ks = [int(k) for k in args.num_pred.split(",")]
    rates = {"tandem plain": [], "tandem lookup": []}
    for k in ks:
        rates[f"llama-lookup (draft {k})"] = []
    for i, q in enumerate(pick_questions(args.prompts, args.limit), 1):
        text = chatml(q["turns"][0])
        line = [f"[{i}] {q.get('category', '?'):<15}"]
        for name, draft in (("tandem plain", "none"), ("tandem lookup", "lookup")):
            tps, n = run_tandem(args, text, draft)
            rates[name].append(tps)
            line.append(f"{name} {tps:6.1f} ({n} tok)")
        for k in ks:
            tps, n, acc = run_llama_lookup(args, text, k)
            rates[f"llama-lookup (draft {k})"].append(tps)
            line.append(f"llama-lookup k={k} {tps:6.1f} ({n} tok, accepted {acc})")
        print(" | ".join(line), file=sys.stderr, flush=True)
    med = {c: statistics.median(v) for c, v in rates.items()}
    print(f"model {os.path.basename(args.model)}, {len(rates['tandem plain'])} questions (first turns), "
          f"threads {args.threads}, max {args.max_tokens} new tokens, greedy; median decode tok/s")
    for c, v in med.items():
        print(f"  {c:<26} {v:7.1f} tok/s")
    best = max((c for c in med if c.startswith("llama")), key=lambda c: med[c])
    print(f"  tandem lookup / best llama-lookup ({best}): {med['tandem lookup'] / med[best]:.2f}x")


if __name__ == "__main__":
    main()
