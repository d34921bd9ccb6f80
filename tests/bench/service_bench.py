#!/usr/bin/python3
"""Benchmark of tandem's distributed service (coordinator + worker processes
on loopback) against in-process `tandem generate`, side by side in one run.
Prints figures (a markdown table); never asserts on timing.

usage: /usr/bin/python3 tests/bench/service_bench.py [--quick] [--out FILE]
           [--model PATH] [--build DIR] [--keep-logs]

Needs Debian's python3 (grpcio, grpc_tools): the gRPC stubs are generated
from proto/ into a temp dir at run time. Starts its own processes on free
loopback ports (no etcd: the coordinator's static `--worker ROLE=ADDR`
mode), each logging to a file in a temp dir, and always stops them by PID
(SIGTERM, then SIGKILL after 10 s) -- in `finally`, at exit and on
SIGINT/SIGTERM.

Figures (default model, greedy, chat prompts from Spec-Bench, medians):
 1. one stream: service vs local `tandem generate`, drafters none and auto.
    Tokens/s is generated tokens / wall time of the request with the model
    already loaded. Service: usage.completion_tokens / usage.total_sec of
    the final message (coordinator-side, from request admission to the last
    token: tokenization, prefill, decode, network hops to the workers).
    Local: `tandem generate` prints prefill and decode rates on stderr; we
    rebuild its model-loaded wall time from them (plain decoding: prefill of
    the prompt + (generated-1) one-row passes; speculation: prefill of
    prompt-1 tokens + the decode loop, see common/gen/gen.c and
    common/spec/spec_session.c), so process start and model load are not
    counted. Runs alternate local/service per prompt so background load on
    the shared machine hits both alike.
 2. drafter "model" (the draft model on the separate drafter process; here
    the drafter serves the same default model, so every draft should be
    accepted). Where the coordinator has --no-overlap (drafting window i+1
    while window i is verified is its default), a second coordinator over
    the same workers gives the non-overlapped figure side by side; older
    builds give the non-overlapped figure only.
 3. concurrency: 1/4/16 streams (threads, one Generate each, ignore_eos so
    lengths are equal), aggregate tokens/s (all tokens / wall of the round)
    and client-side time to first token (p50/p99 over all requests), with
    the verifier's batching on and off (--no-batching), drafters none and
    auto, --max-seqs 32.
 4. `tandem score`: throughput (tokens/s of its final stderr line) with one
    verifier (--threads 2) and two verifiers (--threads 1 each: the same
    2 cores in total); and resume: a job of 10,000 small items (1,000 with
    --quick) is SIGKILLed at about half, re-run, timed, and its output is
    checked to hold every custom_id exactly once.
"""
import argparse
import atexit
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--quick", action="store_true", help="fewer prompts/tokens/repeats, 1 and 4 streams (~4 min)")
ap.add_argument("--out", help="also write the figures table here")
ap.add_argument("--model", default=os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                                                "tandem", "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
ap.add_argument("--build", default=os.path.join(ROOT, "build"))
ap.add_argument("--prompts", default="/work/shared/bench/spec_bench.jsonl")
ap.add_argument("--coordinator-args", default="", help="extra coordinator options, e.g. \"--step-timeout-ms 10000\"")
ap.add_argument("--figures", default="1,3,4", help="which figures to run (1 = figures 1-2), e.g. 3")
ap.add_argument("--keep-logs", action="store_true", help="keep the temp dir of logs even on success")
args = ap.parse_args()

Q = args.quick
CFG = dict(
    n_prompts=3 if Q else 8,          # figure 1/2 prompts
    repeats=1 if Q else 2,            # figure 1/2 repeats per prompt
    tokens1=48 if Q else 128,         # figure 1/2 max_tokens
    streams=[1, 4] if Q else [1, 4, 16],
    tokens3=32 if Q else 64,          # figure 3 max_tokens
    rounds3=1 if Q else 2,            # figure 3 rounds per (config, N); N=1 gets 3x
    score_items=100 if Q else 300,
    resume_items=1000 if Q else 10000,
)

TANDEM = os.path.join(args.build, "tandem")
WORKER = os.path.join(args.build, "tandem-worker")
COORD = os.path.join(args.build, "tandem-coordinator")
TMP = tempfile.mkdtemp(prefix="service_bench.")
LOGS = os.path.join(TMP, "logs")
os.makedirs(LOGS)

# ---- gRPC stubs, generated at run time -------------------------------------------------------
STUBS = os.path.join(TMP, "stubs")
os.makedirs(STUBS)
subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", os.path.join(ROOT, "proto"),
                "--python_out=" + STUBS, "--grpc_python_out=" + STUBS,
                os.path.join(ROOT, "proto/tandem/v1/inference.proto")], check=True)
# health.proto's Python package would be grpc.health.v1, shadowed by the grpc module itself: compile a copy
# under a flat module name (the proto package, hence the wire names, stay grpc.health.v1)
HPROTO = os.path.join(TMP, "hproto")
os.makedirs(HPROTO)
shutil.copy(os.path.join(ROOT, "proto/grpc/health/v1/health.proto"), os.path.join(HPROTO, "bench_health.proto"))
subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", HPROTO, "--python_out=" + STUBS,
                "--grpc_python_out=" + STUBS, os.path.join(HPROTO, "bench_health.proto")], check=True)
sys.path.insert(0, STUBS)
import grpc  # noqa: E402
from tandem.v1 import inference_pb2 as pb, inference_pb2_grpc as pbg  # noqa: E402
import bench_health_pb2 as health_pb2  # noqa: E402
import bench_health_pb2_grpc as health_pb2_grpc  # noqa: E402

# ---- processes: started here, stopped here by PID --------------------------------------------
PROCS = []  # (Popen, name, logpath)
_failed = False


def log(msg):
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def stop(entry):
    p, name, _ = entry
    if p.poll() is None:
        try:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log("%s (pid %d) still running 10 s after SIGTERM: SIGKILL" % (name, p.pid))
            p.kill()
            p.wait()
        except ProcessLookupError:
            pass
    if entry in PROCS:
        PROCS.remove(entry)


def stop_all():
    for e in reversed(list(PROCS)):  # coordinator (started last) first
        stop(e)


def on_exit():
    stop_all()
    if _failed:
        print("service_bench: logs kept in %s" % LOGS, file=sys.stderr)
        for f in sorted(os.listdir(LOGS)):
            print("  %s" % os.path.join(LOGS, f), file=sys.stderr)
    elif not args.keep_logs:
        shutil.rmtree(TMP, ignore_errors=True)
    else:
        print("service_bench: logs in %s" % LOGS, file=sys.stderr)


atexit.register(on_exit)


def _sig(signum, _frame):
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, _sig)
signal.signal(signal.SIGINT, _sig)

_log_seq = [0]


def spawn(name, argv):
    _log_seq[0] += 1
    path = os.path.join(LOGS, "%02d-%s.log" % (_log_seq[0], name))
    f = open(path, "w")
    p = subprocess.Popen(["nice", "-n", "5"] + argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    f.close()
    e = (p, name, path)
    PROCS.append(e)
    return e


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


class Cluster:
    """verifiers: list of extra-option lists (one process each); drafter: start one drafter."""

    def __init__(self, verifiers, drafter=True, tag=""):
        self.entries = []
        self.extra_channels = []
        self.addr = None
        try:
            workers = []
            for i, extra in enumerate(verifiers):
                port = free_port()
                self.entries.append(spawn("verifier%d%s" % (i + 1, tag), [
                    WORKER, "--role", "verifier", "--model", args.model, "--listen", "127.0.0.1:%d" % port,
                    "--id", "verifier-%d" % (i + 1)] + extra))
                workers.append("verifier=127.0.0.1:%d" % port)
            if drafter:
                port = free_port()
                self.entries.append(spawn("drafter" + tag, [
                    WORKER, "--role", "drafter", "--model", args.model, "--listen", "127.0.0.1:%d" % port,
                    "--threads", "1", "--id", "drafter-1"]))
                workers.append("drafter=127.0.0.1:%d" % port)
            # the coordinator starts once every worker listens (a static worker it cannot reach yet would
            # only be retried after its channel's reconnect backoff)
            self._wait_listening([w.split("=", 1)[1] for w in workers])
            self.workers = workers
            self.addr, self.channel, self.stub = self.coordinator(tag=tag)
            self._wait_ready(self.stub, self.channel, len(verifiers), 1 if drafter else 0)
        except BaseException:
            self.close()
            raise

    def coordinator(self, extra=(), tag=""):
        """Starts a coordinator over this cluster's workers; returns (addr, channel, stub)."""
        port = free_port()
        argv = [COORD, "--listen", "127.0.0.1:%d" % port, "--max-calls", "64"]
        for w in self.workers:
            argv += ["--worker", w]
        argv += args.coordinator_args.split() + list(extra)
        self.entries.append(spawn("coordinator" + tag, argv))
        addr = "127.0.0.1:%d" % port
        # connect only once it listens: a Python channel whose first attempt is refused sits in gRPC's
        # reconnect backoff (1 s, x1.6), which delayed our first requests by ~4.5 s
        self._wait_port_line(self.entries[-1][2])
        channel = grpc.insecure_channel(addr, options=[("grpc.initial_reconnect_backoff_ms", 100),
                                                       ("grpc.min_reconnect_backoff_ms", 100),
                                                       ("grpc.max_reconnect_backoff_ms", 200)])
        self.extra_channels.append(channel)
        return addr, channel, pbg.InferenceStub(channel)

    def _wait_listening(self, addrs, timeout=60):
        t_end = time.time() + timeout
        for a in addrs:
            host, port = a.rsplit(":", 1)
            while True:
                self._check_alive()
                try:
                    socket.create_connection((host, int(port)), timeout=1).close()
                    break
                except OSError:
                    if time.time() > t_end:
                        raise RuntimeError("worker at %s not listening after %d s" % (a, timeout))
                    time.sleep(0.05)

    def _wait_port_line(self, path, timeout=60):
        """The coordinator prints `port N` once it listens: connect only then, so that the client's
        channel never starts in gRPC's reconnect backoff (which delayed our first requests by seconds)."""
        t_end = time.time() + timeout
        while time.time() < t_end:
            self._check_alive()
            with open(path, errors="replace") as f:
                if re.search(r"^port \d+$", f.read(), re.M):
                    return
            time.sleep(0.05)
        raise RuntimeError("coordinator did not print its port after %d s; log %s" % (timeout, path))

    def _check_alive(self):
        for p, name, path in self.entries:
            if p.poll() is not None:
                raise RuntimeError("%s exited with %s; log %s:\n%s" % (name, p.returncode, path, tail(path)))

    def _wait_ready(self, stub, channel, n_ver, n_dra, timeout=90):
        health = health_pb2_grpc.HealthStub(channel)
        t_end = time.time() + timeout
        last = None
        while time.time() < t_end:
            self._check_alive()
            try:
                h = health.Check(health_pb2.HealthCheckRequest(service="tandem.v1.Inference"), timeout=2)
                if h.status == health_pb2.HealthCheckResponse.SERVING:
                    ms = stub.ListModels(pb.ListModelsRequest(), timeout=2).models
                    last = ms
                    if ms and ms[0].verifiers >= n_ver and ms[0].drafters >= n_dra:
                        return
            except grpc.RpcError as e:
                last = e.code()
            time.sleep(0.2)
        raise RuntimeError("cluster not ready after %d s (last: %s); logs: %s" %
                           (timeout, last, ", ".join(e[2] for e in self.entries)))

    def close(self):
        try:
            for ch in self.extra_channels:
                ch.close()
            self.extra_channels = []
        finally:
            for e in reversed(self.entries):
                stop(e)
            self.entries = []

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


# ---- helpers ----------------------------------------------------------------------------------
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def pct(xs, q):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q  # linear interpolation (with few samples p99 ~ the max)
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def load_prompts(n):
    out = []
    try:
        with open(args.prompts) as f:
            qs = [json.loads(line) for line in f if line.strip()]
        step = max(1, len(qs) // n)
        out = [qs[i * step]["turns"][0] for i in range(n) if i * step < len(qs)]
    except (OSError, ValueError, KeyError):
        pass
    fallback = ["Explain how a rainbow forms.", "Write a short poem about the sea.",
                "What are three tips for learning a new language?", "Summarise the causes of the First World War.",
                "How do I reverse a list in Python?", "Describe a day in the life of a beekeeper.",
                "What is the difference between weather and climate?", "Give me a recipe for pancakes."]
    return (out + fallback)[:n] if len(out) < n else out[:n]


def generate(stub, prompt, max_tokens, drafters, ignore_eos=True, timeout=600):
    """One Generate stream; returns a dict of figures (client- and server-side)."""
    req = pb.GenerateRequest(prompt=prompt, chat=True, max_tokens=max_tokens, ignore_eos=ignore_eos,
                             speculation=pb.SpeculationParams(drafters=drafters),
                             tenant=uuid.uuid4().hex)  # learning drafters never cross requests (as local)
    t0 = time.perf_counter()
    t_first = None
    last = None
    text = []
    for msg in stub.Generate(req, timeout=timeout):
        if t_first is None and (msg.tokens or msg.text):
            t_first = time.perf_counter()
        text.append(msg.text)
        if msg.done:
            last = msg
    t1 = time.perf_counter()
    if last is None:
        raise RuntimeError("Generate stream ended without a done message")
    u = last.usage
    return dict(tokens=u.completion_tokens, total=u.total_sec, ttft=u.time_to_first_token_sec,
                tok_s=u.completion_tokens / u.total_sec if u.total_sec > 0 else None,
                client_total=t1 - t0, client_ttft=(t_first - t0) if t_first else None,
                tpp=last.speculation.tokens_per_pass, finish=pb.FinishReason.Name(last.finish_reason),
                text="".join(text))


RX_GEN = re.compile(r"prompt (\d+) tokens, generated (\d+) tokens, prefill ([\d.]+) tok/s, decode ([\d.]+) tok/s")
RX_TPP = re.compile(r"([\d.]+) tokens/pass")


def local_generate(prompt, max_tokens, draft):
    argv = ["nice", "-n", "5", TANDEM, "generate", "--model", args.model, "--chat", "--prompt", prompt,
            "--max-tokens", str(max_tokens), "--ignore-eos", "--threads", "2", "--draft", draft]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError("tandem generate failed (%d): %s" % (r.returncode, r.stderr[-2000:]))
    m = RX_GEN.search(r.stderr)
    if not m:
        raise RuntimeError("no summary line in tandem generate's stderr: %s" % r.stderr[-500:])
    n_prompt, n_gen, prefill, decode = int(m.group(1)), int(m.group(2)), float(m.group(3)), float(m.group(4))
    if draft == "none":  # gen.c: prefill of n_prompt, decode = (n_gen - 1) one-row passes
        wall = n_prompt / prefill + (n_gen - 1) / decode
    else:  # spec_session.c: prefill of n_prompt - 1, decode rate = n_gen / decode_sec
        wall = (n_prompt - 1) / prefill + n_gen / decode
    t = RX_TPP.search(r.stderr)
    return dict(tokens=n_gen, total=wall, tok_s=n_gen / wall, tpp=float(t.group(1)) if t else 1.0, text=r.stdout)


HAS_OVERLAP = "--no-overlap" in subprocess.run([COORD, "--help"], capture_output=True, text=True).stdout + \
    subprocess.run([COORD, "--help"], capture_output=True, text=True).stderr


def binaries_state():
    """(git HEAD, mtimes of the binaries): the build dir may be rebuilt by someone else during a run."""
    head = subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%h %ci"], capture_output=True, text=True).stdout
    return head.strip(), tuple(os.stat(b).st_mtime for b in (TANDEM, WORKER, COORD))


RESULTS = []  # (section, rows) for the table
NOTES = []


def fmt(x, nd=1):
    if x is None or (isinstance(x, float) and x != x):
        return "n/a"
    return ("%%.%df" % nd) % x


# ---- figure 1 + 2: one stream ----------------------------------------------------------------
def fig_one_stream():
    prompts = load_prompts(CFG["n_prompts"])
    T = CFG["tokens1"]
    log("figures 1-2: %d prompts x %d repeats, %d tokens" % (len(prompts), CFG["repeats"], T))
    per = {k: [] for k in ("local none", "local auto", "service none", "service auto", "service model",
                           "service model no-overlap")}
    ratio = {"none": [], "auto": []}  # service/local of runs made back to back (same prompt, same minute)
    tpp = {k: [] for k in per}
    mismatch = []
    with Cluster([["--threads", "2", "--max-seqs", "32"]], drafter=True, tag="-f1") as c:
        generate(c.stub, "Hello", 8, "none")  # warm-up
        stub_no = None
        if HAS_OVERLAP:  # a second coordinator over the same workers, drafting only after verification
            _, ch, stub_no = c.coordinator(extra=["--no-overlap"], tag="-f1-no-overlap")
            c._wait_ready(stub_no, ch, 1, 1)
            generate(stub_no, "Hello", 8, "none")
        for rep in range(CFG["repeats"]):
            for i, p in enumerate(prompts):
                order = ["none", "auto"] if (rep + i) % 2 == 0 else ["auto", "none"]
                outs = {}
                for d in order:
                    lo = local_generate(p, T, d)
                    so = generate(c.stub, p, T, d)
                    per["local " + d].append(lo["tok_s"])
                    per["service " + d].append(so["tok_s"])
                    tpp["local " + d].append(lo["tpp"])
                    tpp["service " + d].append(so["tpp"])
                    ratio[d].append(so["tok_s"] / lo["tok_s"])
                    outs[d] = (lo["text"], so["text"])
                if stub_no:
                    sn = generate(stub_no, p, T, "model")
                    per["service model no-overlap"].append(sn["tok_s"])
                    tpp["service model no-overlap"].append(sn["tpp"])
                so = generate(c.stub, p, T, "model")
                per["service model"].append(so["tok_s"])
                tpp["service model"].append(so["tpp"])
                for d, (lt, st) in outs.items():
                    if lt.strip() != st.strip():
                        mismatch.append("prompt %d %s" % (i, d))
                if so["text"].strip() != outs["none"][1].strip():
                    mismatch.append("prompt %d model-vs-none" % i)
    rows = []
    for d in ("none", "auto"):
        lo, se = med(per["local " + d]), med(per["service " + d])
        rows.append(["1 stream, drafters %s" % d, "local %s tok/s (%.2f tok/pass)" % (fmt(lo), med(tpp["local " + d])),
                     "service %s tok/s (%.2f tok/pass)" % (fmt(se), med(tpp["service " + d])),
                     "service/local %sx (median of paired runs; of medians %sx; target >= 0.9x)"
                     % (fmt(med(ratio[d]), 2), fmt(se / lo, 2))])
    sm, sn = med(per["service model"]), med(per["service none"])
    if HAS_OVERLAP:
        so = med(per["service model no-overlap"])
        rows.append(["1 stream, drafters model (separate drafter process), --no-overlap", "-",
                     "service %s tok/s (%.2f tok/pass)" % (fmt(so), med(tpp["service model no-overlap"])),
                     "vs service none %sx" % fmt(so / sn, 2)])
    rows.append(["1 stream, drafters model (separate drafter process), %s" %
                 ("overlapped (coordinator default)" if HAS_OVERLAP else "NOT overlapped (this build cannot)"), "-",
                 "service %s tok/s (%.2f tok/pass)" % (fmt(sm), med(tpp["service model"])),
                 "vs service none %sx" % fmt(sm / sn, 2)])
    RESULTS.append(("1-2. One stream: service vs local `tandem generate` (%d tokens, %d prompts x %d, median)"
                    % (T, len(prompts), CFG["repeats"]), ["figure", "local", "service", "ratio"], rows))
    if mismatch:
        NOTES.append("output text differed between local and service (or model vs none) for: " + ", ".join(mismatch))


# ---- figure 3: concurrency -------------------------------------------------------------------
def run_round(stub, prompts, n, tokens, drafters):
    res = [None] * n
    errs = []

    def one(k):
        try:
            res[k] = generate(stub, prompts[k % len(prompts)], tokens, drafters)
        except Exception as e:  # noqa: BLE001 -- reported, not fatal
            detail = e.details() if isinstance(e, grpc.RpcError) else str(e)
            errs.append("%s: %s" % (e.code().name if isinstance(e, grpc.RpcError) else type(e).__name__, detail))

    ths = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    t0 = time.perf_counter()
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in res if r]
    return dict(agg=sum(r["tokens"] for r in ok) / wall, ttft=[r["client_ttft"] for r in ok],
                tokens=[r["tokens"] for r in ok], errs=errs)


def fig_concurrency():
    prompts = load_prompts(16)
    T = CFG["tokens3"]
    rows = []
    log("figure 3: streams %s, %d tokens" % (CFG["streams"], T))
    for batching in (True, False):
        extra = ["--threads", "2", "--max-seqs", "32"] + ([] if batching else ["--no-batching"])
        with Cluster([extra], drafter=True, tag="-f3" + ("b" if batching else "nb")) as c:
            generate(c.stub, "Hello", 8, "none")
            for drafters in ("none", "auto"):
                agg1 = None
                for n in CFG["streams"]:
                    rounds = CFG["rounds3"] * (3 if n == 1 else 1)
                    aggs, ttfts, errs, toks = [], [], [], []
                    for _ in range(rounds):
                        r = run_round(c.stub, prompts, n, T, drafters)
                        aggs.append(r["agg"])
                        ttfts += r["ttft"]
                        errs += r["errs"]
                        toks += r["tokens"]
                    a = med(aggs)
                    if n == 1:
                        agg1 = a
                    note = ""
                    if errs:
                        note = "; %d errors: %s" % (len(errs), errs[0][:200])
                        NOTES.append("streams=%d batching=%s drafters=%s: %d failed requests, first: %s"
                                     % (n, batching, drafters, len(errs), errs[0]))
                    if toks and min(toks) != max(toks):
                        note += "; lengths %d..%d" % (min(toks), max(toks))
                    rows.append(["on" if batching else "off", drafters, str(n), fmt(a),
                                 fmt(pct(ttfts, .5) * 1000, 0), fmt(pct(ttfts, .99) * 1000, 0),
                                 (fmt(a / agg1, 2) + "x" if agg1 else "n/a") + note])
                    log("  batching=%s drafters=%s n=%d: %.1f tok/s" % (batching, drafters, n, a))
    nmax = CFG["streams"][-1]
    RESULTS.append(("3. Concurrent streams (%d tokens each, ignore_eos; verifier --threads 2 --max-seqs 32; "
                    "TTFT client-side over all requests; ratio = N streams / 1 stream, target for plain decoding at "
                    "%d streams >= 2.5x)" % (T, nmax),
                    ["batching", "drafters", "streams", "aggregate tok/s", "TTFT p50 ms", "TTFT p99 ms",
                     "ratio vs 1 stream"], rows))


# ---- figure 4: tandem score ------------------------------------------------------------------
WORDS = None


def words():
    global WORDS
    if WORDS is None:
        with open(os.path.join(ROOT, "tests/fixtures/english.txt")) as f:
            WORDS = f.read().split()
    return WORDS


def make_items(path, n, n_prompt_words, n_cont_words, seed):
    rnd = random.Random(seed)
    w = words()
    with open(path, "w") as f:
        for i in range(n):
            s = rnd.randrange(0, len(w) - n_prompt_words - n_cont_words)
            f.write(json.dumps({"custom_id": "item-%06d" % i, "prompt": " ".join(w[s:s + n_prompt_words]),
                                "continuation": " " + " ".join(w[s + n_prompt_words:s + n_prompt_words + n_cont_words])})
                    + "\n")


RX_SCORE = re.compile(r"\[score\] done: (\d+) scored, (\d+) errors, (\d+) skipped as already done; (\d+) tokens in "
                      r"([\d.]+) s \((\d+) tokens/s\)")


def score_cmd(addr, inp, out):
    return ["nice", "-n", "5", TANDEM, "score", "--server", addr, "--in", inp, "--out", out]


def run_score(addr, inp, out, timeout=600):
    t0 = time.perf_counter()
    r = subprocess.run(score_cmd(addr, inp, out), capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    m = RX_SCORE.search(r.stderr)
    return dict(rc=r.returncode, wall=wall, stderr=r.stderr,
                done=m and dict(scored=int(m.group(1)), errors=int(m.group(2)), skipped=int(m.group(3)),
                                tokens=int(m.group(4)), sec=float(m.group(5)), tok_s=int(m.group(6))))


def count_lines(path):
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except OSError:
        return 0


def fig_score():
    rows = []
    items = os.path.join(TMP, "score_items.jsonl")
    # ~20 words of prompt + ~35 words of continuation: about 50 continuation tokens
    make_items(items, CFG["score_items"], 20, 35, 1)
    log("figure 4: score %d items with 1 and 2 verifiers" % CFG["score_items"])
    for label, vers in (("1 verifier (--threads 2)", [["--threads", "2", "--max-seqs", "32"]]),
                        ("2 verifiers (--threads 1 each)", [["--threads", "1", "--max-seqs", "32"]] * 2)):
        with Cluster(vers, drafter=False, tag="-f4-%d" % len(vers)) as c:
            out = os.path.join(TMP, "scores-%d.jsonl" % len(vers))
            r = run_score(c.addr, items, out)
            if r["rc"] != 0 or not r["done"]:
                NOTES.append("tandem score (%s) exited %d: %s" % (label, r["rc"], r["stderr"][-500:]))
            d = r["done"] or {}
            rows.append(["score, " + label, "%s tokens/s" % d.get("tok_s", "n/a"),
                         "%s items (%s tokens, %s errors) in %s s" % (d.get("scored"), d.get("tokens"),
                                                                     d.get("errors"), d.get("sec"))])
    # resume
    N = CFG["resume_items"]
    items = os.path.join(TMP, "resume_items.jsonl")
    out = os.path.join(TMP, "resume_out.jsonl")
    make_items(items, N, 6, 4, 2)
    log("figure 4: resume job of %d items" % N)
    with Cluster([["--threads", "2", "--max-seqs", "32"]], drafter=False, tag="-f4-resume") as c:
        errlog = open(os.path.join(LOGS, "score-killed.log"), "w")
        p = subprocess.Popen(score_cmd(c.addr, items, out), stdout=errlog, stderr=subprocess.STDOUT)
        errlog.close()
        entry = (p, "tandem score (to kill)", errlog.name)
        PROCS.append(entry)
        t0 = time.perf_counter()
        while p.poll() is None and count_lines(out) < N // 2 and time.perf_counter() - t0 < 600:
            time.sleep(0.02)
        killed_at = count_lines(out)
        if p.poll() is None:
            p.kill()
        p.wait()
        PROCS.remove(entry)
        t_first = time.perf_counter() - t0
        r = run_score(c.addr, items, out)
        ids = []
        bad = 0
        with open(out, "rb") as f:
            for line in f:
                try:
                    ids.append(json.loads(line)["custom_id"])
                except (ValueError, KeyError):
                    bad += 1
        errs_path = out + ".errors.jsonl"
        n_err = count_lines(errs_path)
        counts = {}
        for i in ids:
            counts[i] = counts.get(i, 0) + 1
        want = {"item-%06d" % i for i in range(N)}
        missing = len(want - set(counts))
        dup = sum(1 for v in counts.values() if v > 1)
        extra = len(set(counts) - want)
        ok = missing == 0 and dup == 0 and extra == 0 and bad == 0
        check = "every custom_id exactly once: %s (%d lines, %d missing, %d duplicated, %d unknown, %d unparsable, " \
                "%d error lines)" % ("YES" if ok else "NO", len(ids) + bad, missing, dup, extra, bad, n_err)
        d = r["done"] or {}
        if r["rc"] != 0 or not ok:
            NOTES.append("resume: rerun exited %d; %s; stderr: %s" % (r["rc"], check, r["stderr"][-800:]))
        rows.append(["resume %d items" % N, "rerun %.2f s until done (wall)" % r["wall"],
                     "first run SIGKILLed after %.2f s at %d output lines; rerun scored %s, skipped %s; %s"
                     % (t_first, killed_at, d.get("scored"), d.get("skipped"), check)])
        log("  resume: " + check)
    RESULTS.append(("4. `tandem score` (%d items of ~20-word prompt + ~35-word continuation; resume items 6+4 words)"
                    % CFG["score_items"], ["figure", "throughput / time", "details"], rows))


STATE0 = None


def table():
    head, mt = STATE0
    out = ["# tandem service benchmark (%s)" % ("--quick" if Q else "full"), "",
           "checkout %s; binaries built %s" % (head, time.strftime("%H:%M:%S", time.localtime(max(mt)))), "",
           "model %s; %s; load average at end %s; %s" % (os.path.basename(args.model), time.strftime("%Y-%m-%d %H:%M"),
                                                         "%.2f %.2f %.2f" % os.getloadavg(),
                                                         "2-core shared machine: medians, compare side by side"),
           ""]
    for title, head, rows in RESULTS:
        out += ["## " + title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        out.append("")
    if NOTES:
        out += ["## Notes", ""] + ["- " + n for n in NOTES] + [""]
    return "\n".join(out)


def main():
    global _failed
    for b in (TANDEM, WORKER, COORD):
        if not os.access(b, os.X_OK):
            sys.exit("service_bench: %s is missing (build first)" % b)
    if not os.path.exists(args.model):
        sys.exit("service_bench: model %s is missing" % args.model)
    global STATE0
    STATE0 = binaries_state()
    t0 = time.time()
    try:
        figs = set(args.figures.split(","))
        if "1" in figs or "2" in figs:
            fig_one_stream()
        if "3" in figs:
            fig_concurrency()
        if "4" in figs:
            fig_score()
    except BaseException:
        _failed = True
        if RESULTS:
            print(table())
        raise
    finally:
        stop_all()
    if binaries_state()[1] != STATE0[1]:
        NOTES.append("the binaries in %s were rebuilt during this run (now at %s): the figures mix builds"
                     % (args.build, binaries_state()[0]))
    if NOTES:
        _failed = True  # keep the logs for whoever reads the notes
    text = table() + "\nrun time %.0f s\n" % (time.time() - t0)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
