#!/usr/bin/env python3
"""tp_bench.py — tensor parallelism side by side on this machine: decode and
prefill tok/s of TP=2 (2 ranks x 1 thread) vs TP=1 x 2 threads vs TP=1 x 1
thread (and the tp-invariant order at TP=2 and TP=1 x 2), collective bytes
per decoded token and their share of the time, the largest rank's resident
memory, and what the bytes predict for TP across machines on 10 and 100
Gbit/s networks. Rounds interleave the configurations (the machine is
shared and noisy); medians are printed. Figures only, never pass/fail.

usage: tests/bench/tp_bench.py [--build build] [--rounds 5] [--prefill 256] [--decode 64]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

CONFIGS = [  # (label, tp, threads, numerics)
    ("TP=2 (2 ranks x 1 thread)", 2, 1, "fast"),
    ("TP=1 x 2 threads", 1, 2, "fast"),
    ("TP=1 x 1 thread", 1, 1, "fast"),
    ("TP=2, tp-invariant", 2, 1, "tp-invariant"),
    ("TP=1 x 2 threads, tp-invariant", 1, 2, "tp-invariant"),
]

# Assumed per-collective latency (one small message round in the chain +
# broadcast that td_comm's all-reduce is): TCP over 10 Gbit/s Ethernet, and
# RDMA over 100 Gbit/s.
NETS = [("10 Gbit/s", 10e9, 30e-6), ("100 Gbit/s", 100e9, 5e-6)]


def run(args, tp, threads, numerics):
    cmd = [os.path.join(args.build, "td-tp-bench"), "--tp", str(tp), "--threads", str(threads),
           "--prefill", str(args.prefill), "--decode", str(args.decode), "--numerics", numerics]
    if tp > 1:
        cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(tp)] + cmd
    out = subprocess.run(["nice", "-n", "10"] + cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prefill", type=int, default=256)
    ap.add_argument("--decode", type=int, default=64)
    args = ap.parse_args()
    samples = {c[0]: [] for c in CONFIGS}
    for r in range(args.rounds):
        order = CONFIGS[r % len(CONFIGS):] + CONFIGS[:r % len(CONFIGS)]  # rotate: no config always first
        for label, tp, threads, numerics in order:
            samples[label].append(run(args, tp, threads, numerics))
        print(f"# round {r + 1}/{args.rounds} done", file=sys.stderr)

    def med(label, key):
        return statistics.median(s[key] for s in samples[label])

    print(f"{args.rounds} rounds, prefill {args.prefill} tokens, decode {args.decode} tokens; medians")
    print(f"{'configuration':34s} {'prefill tok/s':>13s} {'decode tok/s':>12s} {'max RSS MiB':>11s} "
          f"{'weights MiB':>11s} {'coll. B/tok':>11s} {'coll./tok':>9s} {'comm share (min-max rank)':>26s}")
    for label, tp, _, _ in CONFIGS:
        b = med(label, "decode_allreduce_bytes_per_tok") + med(label, "decode_gather_bytes_per_tok")
        share = (f"{100 * med(label, 'decode_comm_share_min'):.0f}-{100 * med(label, 'decode_comm_share'):.0f} %"
                 if tp > 1 else "-")
        print(f"{label:34s} {med(label, 'prefill_tok_s'):13.1f} {med(label, 'decode_tok_s'):12.2f} "
              f"{med(label, 'max_rss_mib'):11.1f} {med(label, 'max_weight_mib'):11.2f} {b:11.0f} "
              f"{med(label, 'decode_collectives_per_tok'):9.0f} {share:>26s}")
    print()
    print("Prediction for TP=2 across two machines (per decoded token: compute = this run's TP=2 pass time")
    print("less its least in-collective time; network = wire bytes / bandwidth + latency x collectives).")
    print("Wire bytes per rank: all-reduce of n bytes ~ n (chain + broadcast at 2 ranks), all-gather of")
    print("T bytes in all ~ T/2 received.")
    for label in ("TP=2 (2 ranks x 1 thread)", "TP=2, tp-invariant"):
        dec = med(label, "decode_tok_s")
        t_tok = 1.0 / dec
        compute = t_tok * (1 - med(label, "decode_comm_share_min"))
        ar, ga = med(label, "decode_allreduce_bytes_per_tok"), med(label, "decode_gather_bytes_per_tok")
        n_coll = med(label, "decode_collectives_per_tok")
        for with_logits in (True, False):
            # without the logits gather: a distributed argmax/sample sends a
            # few bytes instead of the rank's vocabulary slice (tp-invariant's
            # gathers also carry the chunk partials, which stay)
            logits = 49152 * 4 if not with_logits else 0
            wire = ar + (ga - logits) / 2
            for name, bw, lat in NETS:
                net = wire * 8 / bw + lat * n_coll
                print(f"  {label:26s} {'with' if with_logits else 'w/o '} logits gather, {name:10s}: "
                      f"{wire / 1024:7.1f} KiB/token, network {1e3 * net:6.3f} ms + compute {1e3 * compute:6.2f} ms "
                      f"-> {1.0 / (compute + net):6.1f} tok/s")
    print()
    print(json.dumps({k: v for k, v in samples.items()}))


if __name__ == "__main__":
    main()
