#!/usr/bin/env python3
"""Side-by-side engine benchmark: tandem vs llama.cpp on the same model, the
same prompt tokens and thread counts, in one run. Alternates the two for
--rounds rounds (each round: --repeats measurements per tool) so background
load hits both alike, then prints medians over rounds and the ratios
tandem / llama.cpp. Figures only: nothing passes or fails.

usage: ~/.cache/tandem/refvenv/bin/python tests/bench/engine_vs_llamacpp.py \
           [--tandem build/tandem] [--model PATH] [--threads 1,2] [--rounds 3] [--repeats 3]
           [--numerics fast|reference|llamacpp]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(os.path.dirname(here))
ap = argparse.ArgumentParser()
ap.add_argument("--tandem", default=os.path.join(root, "build", "tandem"))
ap.add_argument("--model", default=os.path.expanduser("~/.cache/tandem/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
ap.add_argument("--threads", default="1,2")
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--repeats", type=int, default=3)
ap.add_argument("--numerics", default="fast", choices=["fast", "reference", "llamacpp"],
                help="tandem's matmul order (see tandem bench engine --help)")
args = ap.parse_args()
threads = [int(t) for t in args.threads.split(",")]
text = os.path.join(root, "tests", "fixtures", "english.txt")

ours = {t: {"decode": [], "prefill": [], "verify": {}} for t in threads}
ref = {t: {"decode": [], "prefill": [], "verify": {}} for t in threads}
bw = {}
for rnd in range(args.rounds):
    out = subprocess.run([args.tandem, "bench", "engine", "--model", args.model, "--text", text,
                          "--threads", args.threads, "--repeats", str(args.repeats), "--numerics", args.numerics],
                         check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        m = re.match(r"threads (\d+): decode ([\d.]+) tok/s .* prefill ([\d.]+) tok/s", line)
        if m:
            t = int(m.group(1))
            ours[t]["decode"].append(float(m.group(2)))
            ours[t]["prefill"].append(float(m.group(3)))
        m = re.match(r"threads (\d+): verify cost vs 1 row(?: after \d+ tokens)?:(.*)\(", line)
        if m:
            for k, r in re.findall(r"(\d+) rows ([\d.]+)x", m.group(2)):
                ours[int(m.group(1))]["verify"].setdefault(int(k), []).append(float(r))
        m = re.match(r"threads (\d+): read bandwidth ([\d.]+) GB/s; weights ([\d.]+) MB/token", line)
        if m:
            bw.setdefault(int(m.group(1)), []).append((float(m.group(2)), float(m.group(3))))
    out = subprocess.run([sys.executable, os.path.join(here, "llamacpp_bench.py"), "--model", args.model,
                          "--threads", args.threads, "--repeats", str(args.repeats)],
                         check=True, capture_output=True, text=True).stdout
    data = json.loads(out[:out.rindex("}") + 1])
    for run in data["runs"]:
        t = run["threads"]
        ref[t]["decode"].append(run["decode_tok_s"])
        ref[t]["prefill"].append(run["prefill_tok_s"])
        for k, r in run.get("verify_ratio_to_k1", {}).items():
            ref[t]["verify"].setdefault(int(k), []).append(r)
    print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)

med = statistics.median
print(f"model {os.path.basename(args.model)}; tandem --numerics {args.numerics}; "
      f"medians over {args.rounds} alternating rounds of {args.repeats} repeats")
print(f"{'threads':>7} | {'decode tok/s tandem / llama.cpp (ratio)':>42} | {'prefill tok/s tandem / llama.cpp (ratio)':>42}")
for t in threads:
    d1, d2 = med(ours[t]["decode"]), med(ref[t]["decode"])
    p1, p2 = med(ours[t]["prefill"]), med(ref[t]["prefill"])
    print(f"{t:>7} | {d1:>14.1f} / {d2:>8.1f} ({d1 / d2:5.2f}x)          | {p1:>14.1f} / {p2:>8.1f} ({p1 / p2:5.2f}x)")
for t in threads:
    ks = sorted(ours[t]["verify"])
    print(f"verify cost, {t} thread(s), multiple of one row: " + "  ".join(
        f"k={k}: tandem {med(ours[t]['verify'][k]):.2f}x llama.cpp {med(ref[t]['verify'].get(k, [0])):.2f}x" for k in ks))
for t in threads:
    if t in bw:
        b = med([x[0] for x in bw[t]]); w = bw[t][0][1]
        lim = b * 1e3 / w
        print(f"bandwidth, {t} thread(s): {b:.1f} GB/s read; {w:.1f} MB of weights per token -> limit {lim:.1f} tok/s; "
              f"tandem decode at {100 * med(ours[t]['decode']) / lim:.0f}% of it")
