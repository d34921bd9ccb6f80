#!/usr/bin/env python3
"""gateway_bench.py — tandem behind the OpenAI-compatible gateway, side by
side in one run. Prints figures (markdown); asserts nothing on timing.

usage: build/venv-gateway/bin/python tests/bench/gateway_bench.py [--build DIR]
           [--prompts N] [--tokens N] [--conversations N]

Needs the gateway venv (scripts/setup.sh) and the default model. Starts the
loopback cluster with deploy/local/up.sh --gateway (each process its own,
stopped by down.sh by PID) twice: once for figure 1, once per figure-2 arm.

 1. One greedy stream, chat prompts, --tokens generated (ignore_eos), the
    same prompt through three paths, back to back so background load hits
    them alike, drafters none everywhere (the coordinator's --vllm-drafters
    none; `--draft none` in the CLI) and then auto:
      in-process   `tandem generate --chat` (its model-loaded wall time,
                   rebuilt from the prefill and decode rates it prints, as
                   tests/bench/service_bench.py does);
      direct       `tandem generate --server COORD` (tandem.v1 over gRPC):
                   generated tokens / the coordinator's usage.total_sec;
      gateway      the `openai` client, chat.completions with stream=True
                   through smg -> VllmEngine -> verifier: completion tokens /
                   client wall time from sending to the last chunk (this
                   includes HTTP, the gateway's tokenizing and chat template).
    Reported: medians of tokens/s and of the per-prompt ratios to in-process.
 2. Time to first token of the third turn of a chat (each turn the whole
    conversation so far, as a gateway sends it; answers --tokens long), with
    the verifier's prefix cache (default) and with --no-prefix-cache: client
    time from sending turn 3 to its first streamed chunk, median over
    --conversations conversations.
"""
import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
import openai  # noqa: E402

PROMPTS = ["Explain how a rainbow forms.", "Write a short poem about the sea.",
           "What are three tips for learning a new language?", "Summarise the causes of the First World War.",
           "How do I reverse a list in Python?", "Describe a day in the life of a beekeeper.",
           "What is the difference between weather and climate?", "Give me a recipe for pancakes."]
RX_GEN = re.compile(r"prompt (\d+) tokens, generated (\d+) tokens, prefill ([\d.]+) tok/s, decode ([\d.]+) tok/s")
RX_SRV = re.compile(r"generated (\d+) tokens in ([\d.]+) s")


def log(msg):
    print("[gateway_bench] " + msg, file=sys.stderr, flush=True)


class Cluster:
    def __init__(self, build, verifier_flags="", coord_flags=""):
        self.dir = tempfile.mkdtemp(prefix="tandem-gwb-")
        self.env = dict(os.environ, TANDEM_LOCAL_DIR=self.dir, TANDEM_BUILD=build,
                        TANDEM_GATEWAY_VENV=os.path.dirname(os.path.dirname(sys.executable)),
                        TANDEM_VERIFIER_FLAGS=verifier_flags, TANDEM_COORD_FLAGS=coord_flags)

    def __enter__(self):
        r = subprocess.run([os.path.join(ROOT, "deploy", "local", "up.sh"), "--gateway"], env=self.env,
                           capture_output=True, text=True, timeout=300)
        if r.returncode:
            self.__exit__()
            raise RuntimeError("up.sh failed: " + r.stderr[-2000:])
        with open(os.path.join(self.dir, "address")) as f:
            self.coord = f.read().strip()
        with open(os.path.join(self.dir, "gateway-address")) as f:
            self.gateway = f.read().strip()
        self.oai = openai.OpenAI(base_url="http://%s/v1" % self.gateway, api_key="-", timeout=600, max_retries=0)
        self.model = self.oai.models.list().data[0].id
        return self

    def __exit__(self, *a):
        subprocess.run([os.path.join(ROOT, "deploy", "local", "down.sh")], env=self.env, capture_output=True)


def local(build, prompt, tokens, draft):
    r = subprocess.run([os.path.join(build, "tandem"), "generate", "--chat", "--prompt", prompt, "--max-tokens",
                        str(tokens), "--ignore-eos", "--draft", draft], capture_output=True, text=True, check=True)
    n_prompt, n_gen, prefill, decode = (float(x) for x in RX_GEN.search(r.stderr).groups())
    if draft == "none":  # gen.c: prefill of the prompt, then n_gen - 1 one-row passes
        wall = n_prompt / prefill + (n_gen - 1) / decode
    else:  # spec_session.c: prefill of prompt - 1, decode rate = n_gen / decode time
        wall = (n_prompt - 1) / prefill + n_gen / decode
    return n_gen / wall, r.stdout


def direct(build, coord, prompt, tokens, draft):
    r = subprocess.run([os.path.join(build, "tandem"), "generate", "--server", coord, "--chat", "--prompt", prompt,
                        "--max-tokens", str(tokens), "--ignore-eos", "--draft", draft], capture_output=True, text=True,
                       check=True)
    n, sec = RX_SRV.search(r.stderr).groups()
    return int(n) / float(sec), r.stdout


def gateway(c, prompt, tokens):
    t0 = time.perf_counter()
    stream = c.oai.chat.completions.create(model=c.model, messages=[{"role": "user", "content": prompt}],
                                           max_tokens=tokens, temperature=0, stream=True,
                                           stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    text, usage = [], None
    for ch in stream:
        if ch.choices:
            text.append(ch.choices[0].delta.content or "")
        usage = ch.usage or usage
    wall = time.perf_counter() - t0
    return usage.completion_tokens / wall, "".join(text), usage.completion_tokens


def fig_one_stream(a):
    rows = []
    for draft in ("none", "auto"):
        with Cluster(a.build, coord_flags="--vllm-drafters " + draft) as c:
            gateway(c, "Hello", 8)  # warm-up: tokenizer, connections
            lo, di, gw, r_di, r_gw, same = [], [], [], [], [], 0
            for i, p in enumerate(PROMPTS[:a.prompts]):
                order = [0, 1, 2] if i % 2 == 0 else [2, 1, 0]
                res = {}
                for k in order:
                    if k == 0:
                        res[0] = local(a.build, p, a.tokens, draft)
                    elif k == 1:
                        res[1] = direct(a.build, c.coord, p, a.tokens, draft)
                    else:
                        res[2] = gateway(c, p, a.tokens)
                lo.append(res[0][0])
                di.append(res[1][0])
                gw.append(res[2][0])
                r_di.append(res[1][0] / res[0][0])
                r_gw.append(res[2][0] / res[0][0])
                same += res[2][1].strip() == res[0][1].strip()
                log("drafters %s prompt %d: local %.1f, direct %.1f, gateway %.1f tok/s" % (draft, i, res[0][0],
                                                                                           res[1][0], res[2][0]))
            med = statistics.median
            rows.append("| %s | %.1f | %.1f (%.2fx) | %.1f (%.2fx) | %d/%d |" % (
                draft, med(lo), med(di), med(r_di), med(gw), med(r_gw), same, len(lo)))
    print("\n### 1. One greedy stream, %d tokens, %d chat prompts (medians; ratio = median of per-prompt ratios to "
          "in-process)\n" % (a.tokens, a.prompts))
    print("| drafters | in-process tok/s | direct gRPC tok/s | gateway (OpenAI HTTP) tok/s | gateway text = in-process |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


def third_turn_ttft(c, first, tokens):
    msgs = [{"role": "user", "content": first}]
    for question in ("Tell me more.", "Summarise that in one sentence."):
        r = c.oai.chat.completions.create(model=c.model, messages=msgs, max_tokens=tokens, temperature=0,
                                          extra_body={"ignore_eos": True})
        msgs += [{"role": "assistant", "content": r.choices[0].message.content}, {"role": "user", "content": question}]
    t0 = time.perf_counter()
    stream = c.oai.chat.completions.create(model=c.model, messages=msgs, max_tokens=4, temperature=0, stream=True,
                                           stream_options={"include_usage": True})
    ttft, usage = None, None
    for ch in stream:
        if ttft is None and ch.choices and ch.choices[0].delta.content:
            ttft = time.perf_counter() - t0
        usage = ch.usage or usage
    return ttft, usage.prompt_tokens


def fig_prefix(a):
    rows = []
    for label, flags in (("prefix cache (default)", ""), ("--no-prefix-cache", "--no-prefix-cache")):
        with Cluster(a.build, verifier_flags=flags) as c:
            third_turn_ttft(c, "Hi", 8)  # warm-up
            got = [third_turn_ttft(c, p, a.tokens) for p in PROMPTS[:a.conversations]]
            ttfts = [g[0] for g in got]
            rows.append("| %s | %d | %.3f | %.3f..%.3f |" % (label, statistics.median(g[1] for g in got),
                                                          statistics.median(ttfts), min(ttfts), max(ttfts)))
            log("%s: %s" % (label, ["%.3f" % t for t in ttfts]))
    print("\n### 2. Time to first token of a chat's third turn (answers of %d tokens; %d conversations)\n"
          % (a.tokens, a.conversations))
    print("| verifier | turn-3 prompt tokens (median) | TTFT s (median) | range |")
    print("|---|---|---|---|")
    print("\n".join(rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--conversations", type=int, default=6)
    a = ap.parse_args()
    a.build = os.path.abspath(a.build)
    # a SIGTERM unwinds like Ctrl-C, so every cluster is stopped by down.sh
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    fig_one_stream(a)
    fig_prefix(a)


if __name__ == "__main__":
    main()
