#!/usr/bin/env python3
"""Prompt-lookup speculative decoding: tandem against llama.cpp, side by side.

For --limit questions of Spec-Bench (the same spread as `tandem bench spec
--limit N`: every (lines/N)-th line), the first turn is put in the ChatML
template of the default model (SmolLM2's default system message) and answered
greedily, up to --max-tokens new tokens, by:

  tandem     plain      `tandem generate --draft none`
  tandem     lookup     `tandem generate --draft lookup`   (draft max 8, adaptive)
  llama.cpp  plain      llama-cpp-python Llama.generate, greedy (top_k 1)
  llama.cpp  lookup     the same with draft_model=LlamaPromptLookupDecoding
                        (llama-cpp-python's prompt-lookup decoding), once per
                        --num-pred value

Rounds are interleaved (every configuration on a question before the next
question) so that machine noise hits all alike. Reported per configuration:
median decode tokens/s over the questions (tokens after the first / time
after the first), and the ratio of each lookup run to its own engine's plain
run; plus tandem lookup / llama.cpp lookup. Both engines get the same token
ids (checked: tandem's tokenizer against llama.cpp's on each prompt).

Timings only: nothing here passes or fails.

Usage:
  ~/.cache/tandem/refvenv/bin/python tests/bench/lookup_vs_llamacpp.py \
      --tandem build/tandem --prompts ../shared/bench/spec_bench.jsonl --limit 12
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

import llama_cpp
from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

from specbench_prompts import DEFAULT_MODEL, chatml, pick_questions


def tandem_ids(tandem, model, text):
    out = subprocess.run([tandem, "tokenize", "--model", model, "--text", text],
                         check=True, capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


SUMMARY = re.compile(r"generated (\d+) tokens, prefill ([\d.]+) tok/s, decode ([\d.]+) tok/s")


def run_tandem(tandem, model, text, args, draft):
    cmd = [tandem, "generate", "--model", model, "--prompt", text, "--max-tokens",
           str(args.max_tokens), "--threads", str(args.threads), "--draft", draft]
    p = subprocess.run(cmd, check=True, capture_output=True)
    m = SUMMARY.search(p.stderr.decode("utf-8", "replace"))
    if not m:
        sys.exit("cannot read tandem's summary line:\n" + p.stderr.decode("utf-8", "replace"))
    return {"tokens": int(m.group(1)), "decode_tps": float(m.group(3)), "text": p.stdout}


def run_llama(llm, ids, max_tokens):
    """Greedy generation; decode rate = tokens after the first / time after the first."""
    llm.reset()
    n = 0
    t_first = t_end = None
    out = []
    t0 = time.perf_counter()
    # generate() edits the list it is given: hand it a copy
    for tok in llm.generate(list(ids), top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                            reset=True):
        now = time.perf_counter()
        if tok == llm.token_eos() or llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok):
            break
        out.append(tok)
        n += 1
        if t_first is None:
            t_first = now
        t_end = now
        if n >= max_tokens:
            break
    rate = (n - 1) / (t_end - t_first) if n > 1 and t_end > t_first else float("nan")
    return {"tokens": n, "decode_tps": rate, "prefill_s": (t_first or t0) - t0, "ids": out}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tandem", default="build/tandem")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--limit", type=int, default=12)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--num-pred", default="2,10",
                    help="llama.cpp LlamaPromptLookupDecoding num_pred_tokens values (comma list)")
    ap.add_argument("--json", help="write all samples here")
    args = ap.parse_args()
    num_preds = [int(x) for x in args.num_pred.split(",") if x]

    common = dict(model_path=args.model, n_ctx=4096, n_threads=args.threads,
                  n_threads_batch=args.threads, n_batch=512, verbose=False, flash_attn=False)
    plain = llama_cpp.Llama(**common)
    # With a draft model llama-cpp-python keeps logits of every position but
    # sizes that buffer by n_batch: prompts longer than n_batch fail. Give the
    # lookup contexts a batch as large as the context (decode speed is not
    # affected; memory is n_ctx x n_vocab floats).
    lookup_args = dict(common, n_batch=common["n_ctx"])
    lookups = {k: llama_cpp.Llama(**lookup_args, draft_model=LlamaPromptLookupDecoding(
        max_ngram_size=2, num_pred_tokens=k)) for k in num_preds}

    configs = ["tandem plain", "tandem lookup", "llama.cpp plain"] + \
              [f"llama.cpp lookup (num_pred {k})" for k in num_preds]
    rates = {c: [] for c in configs}
    samples = []
    for qi, q in enumerate(pick_questions(args.prompts, args.limit)):
        text = chatml(q["turns"][0])
        ids = tandem_ids(args.tandem, args.model, text)
        ref_ids = plain.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if ids != list(ref_ids):
            sys.exit(f"question {qi}: tokenizers disagree; refusing to compare different inputs")
        row = {"category": q.get("category"), "n_prompt": len(ids)}
        row["tandem plain"] = run_tandem(args.tandem, args.model, text, args, "none")
        row["tandem lookup"] = run_tandem(args.tandem, args.model, text, args, "lookup")
        row["llama.cpp plain"] = run_llama(plain, ids, args.max_tokens)
        for k in num_preds:
            row[f"llama.cpp lookup (num_pred {k})"] = run_llama(lookups[k], ids, args.max_tokens)
        for c in configs:
            rates[c].append(row[c]["decode_tps"])
        same = row["llama.cpp plain"]["ids"] == row[f"llama.cpp lookup (num_pred {num_preds[0]})"]["ids"]
        print(f"[{qi + 1}] {row['category']:<15} prompt {len(ids):4d} tok | " +
              " | ".join(f"{c} {row[c]['decode_tps']:.1f}" for c in configs) +
              f" | llama.cpp lookup output == plain: {same}", file=sys.stderr)
        for c in configs:
            row[c].pop("ids", None)
            row[c].pop("text", None)
        samples.append(row)

    med = {c: statistics.median(v) for c, v in rates.items()}
    print(f"\nmodel {os.path.basename(args.model)}, {len(samples)} questions (first turns), "
          f"threads {args.threads}, max {args.max_tokens} new tokens, greedy; median decode tok/s")
    for c in configs:
        base = med["tandem plain"] if c.startswith("tandem") else med["llama.cpp plain"]
        print(f"  {c:<30} {med[c]:7.1f} tok/s   {med[c] / base:5.2f}x its own plain decoding")
    best = max((c for c in configs if c.startswith("llama.cpp lookup")), key=lambda c: med[c])
    print(f"  tandem lookup / best llama.cpp lookup ({best}): {med['tandem lookup'] / med[best]:.2f}x")
    print(f"  tandem plain / llama.cpp plain: {med['tandem plain'] / med['llama.cpp plain']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"medians": med, "samples": samples}, f, indent=1)


if __name__ == "__main__":
    main()
