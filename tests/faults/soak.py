#!/usr/bin/python3
"""soak.py — issue 17 §2: bounded load on loopback against a real cluster
(Debian's etcd, one coordinator, one verifier, one drafter; processes
started here and stopped by PID, also on failure).

Closed loop (--loop closed, the default): N concurrent client streams, each
sending its next request as soon as its last one ended (no think time), so
at most N requests are ever outstanding: the load is bounded by
construction.

Open loop (--loop open): requests arrive at a fixed rate whatever the
service does (--rate R a second; --arrivals poisson, the default, draws
exponential gaps from a seeded generator, `fixed` spaces them 1/R apart),
so a slow service sees more requests in flight, as with real users. Still
bounded: an arrival that finds --max-outstanding requests (default 64) in
flight is shed by the generator (counted, never queued, never sent); each
arrival is one attempt (an open-loop client does not retry). TTFT counts
from the arrival. Phases: rates R/4 and R/2 (--stage-s each), then R held
for --open-minutes (default --minutes). --loop both runs the closed loop,
then the open loop, on the same cluster.

Requests mix streaming
Generate (greedy and seeded, with and without drafters, 64 tokens,
ignore_eos) and Score (6 items); every completed one is checked against an
undisturbed run (identical tokens / results). A request the coordinator
refuses (RESOURCE_EXHAUSTED: beyond --max-calls in flight) is counted as
rejected and its stream waits 100 ms before its next one (the rejected
share is of attempts, retries included).

Phases: a ramp of concurrent streams (1, 2, 4, 8, 16; --long: up to 64), a
few seconds each, then N streams (--hold, default 16) held for --minutes.
The coordinator runs with --max-calls (default 12), below the held
streams, so admission must answer RESOURCE_EXHAUSTED rather than queue.

Checked (any failure exits 1):
- every completed request identical; failures only RESOURCE_EXHAUSTED (no
  DEADLINE_EXCEEDED, no other status: nothing queued without bound);
- during the closed-loop hold, with more streams than --max-calls, some
  requests are rejected (admission works) and some complete (it does not
  refuse all); during the open-loop hold some complete, and if the
  generator ever had to shed (more than --max-outstanding in flight, above
  --max-calls) the coordinator must have rejected some (else it queued);
- RSS and open fds of the tandem processes flat after warm-up (the first
  third of the hold): the median RSS of the last third may exceed the
  median of the middle third by at most max(8 MiB, 5 %), the fd count by at
  most 4 (gRPC opens and closes sockets and timer fds as calls come and
  go). etcd's figures are reported, not checked: it keeps every revision of
  the load updates until compaction, which is growth by design.
  The same check for the open-loop hold, over its own thirds.
Reported: per phase throughput (completed requests/s, output tokens/s),
p50/p99 time to first token and time per output token, rejected share
(open loop: also the offered rate, requests shed by the generator and the
most in flight); peak RSS (VmHWM) and fds per process.

Usage: /usr/bin/python3 soak.py BUILD_DIR [--loop closed|open|both] [--minutes M] [--hold N]
       [--max-calls K] [--stage-s S] [--deadline S] [--long] [--rate R] [--arrivals poisson|fixed]
       [--max-outstanding K] [--open-minutes M] [--seed N] [--model GGUF] [--keep-logs]
--deadline: every request's (default 60 s; a request past it fails the run)
"""
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import Cluster, proc_fds, proc_rss_kib  # noqa: E402
import grpc  # noqa: E402

P1 = "the quick brown fox jumps over the lazy dog and the quick brown fox"
P2 = "in a land far away there lived"


def shapes():
    pb = common.pb
    greedy = pb.SamplingParams(temperature=0.0, seed=0)
    seeded = pb.SamplingParams(temperature=0.8, top_p=0.95, seed=4242)
    g = lambda p, sp, d: ("gen", pb.GenerateRequest(prompt=p, max_tokens=64, ignore_eos=True, sampling=sp,
                                                     speculation=pb.SpeculationParams(drafters=d)))
    items = [pb.ScoreItem(id="s%d" % i, prompt="the cat number %d" % i, continuation=" sat on the mat" * (1 + i % 3))
             for i in range(6)]
    return [("greedy", g(P1, greedy, "none")), ("greedy-draft", g(P1, greedy, "auto,model")),
            ("seeded", g(P2, seeded, "none")), ("seeded-draft", g(P2, seeded, "lookup,model")),
            ("score", ("score", pb.ScoreRequest(items=items, top_k=2, add_bos=True)))]


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


class Load:
    def __init__(self, addr, expected, shape_list, deadline):
        self.ch = grpc.insecure_channel(addr)
        self.stub = common.pbg.InferenceStub(self.ch)
        self.expected, self.shapes, self.deadline = expected, shape_list, deadline
        self.mu = threading.Lock()
        self.records = []   # (t_end, kind, status, ttft, tpot, ntok)
        self.wrong = []
        self.shed = []      # open loop: arrival times the generator shed
        self.arrivals = []  # open loop: every arrival time
        self.peak_out = 0
        self.threads = []
        self.stop_ev = threading.Event()

    def one(self, i, t0=None):
        """One request; t0: when it arrived (open loop), else now."""
        name, (kind, req) = self.shapes[i % len(self.shapes)]
        t0 = t0 or time.time()
        ttft = tpot = None
        ids = []
        try:
            if kind == "score":
                r = self.stub.Score(req, timeout=self.deadline)
                got = [x.SerializeToString() for x in r.results]
            else:
                t_first = t_last = None
                for m in self.stub.Generate(req, timeout=self.deadline):
                    if m.tokens:
                        t_last = time.time()
                        if t_first is None:
                            t_first = t_last
                            n_first = len(m.tokens)
                        ids.extend(t.id for t in m.tokens)
                got = ids
                ttft = t_first - t0
                if len(ids) > n_first:
                    tpot = (t_last - t_first) / (len(ids) - n_first)
            status = "OK"
            if got != self.expected[name]:
                status = "WRONG"
                with self.mu:
                    self.wrong.append(name)
        except grpc.RpcError as e:
            status = e.code().name
        with self.mu:
            self.records.append((time.time(), kind, status, ttft, tpot, len(ids)))
        return status

    def stream(self, k, stop):
        i = k
        while not stop.is_set() and not self.stop_ev.is_set():
            st = self.one(i)
            i += 1
            if st == "RESOURCE_EXHAUSTED":
                time.sleep(0.1)

    def set_streams(self, n):
        """Runs exactly n streams (stops the extra ones, starts new ones)."""
        while len(self.threads) > n:
            t, stop = self.threads.pop()
            stop.set()
            t.join(self.deadline + 10)
        while len(self.threads) < n:
            stop = threading.Event()
            t = threading.Thread(target=self.stream, args=(len(self.threads), stop), daemon=True)
            t.start()
            self.threads.append((t, stop))

    def close(self):
        self.stop_ev.set()
        for t, _ in self.threads:
            t.join(self.deadline + 10)
        alive = sum(1 for t, _ in self.threads if t.is_alive())
        self.ch.close()
        return alive

    def window(self, t0, t1):
        with self.mu:
            rs = [r for r in self.records if t0 <= r[0] < t1]
            shed = sum(1 for t in self.shed if t0 <= t < t1)
            arrived = sum(1 for t in self.arrivals if t0 <= t < t1)
        ok = [r for r in rs if r[2] == "OK"]
        rej = [r for r in rs if r[2] == "RESOURCE_EXHAUSTED"]
        other = {}
        for r in rs:
            if r[2] not in ("OK", "RESOURCE_EXHAUSTED"):
                other[r[2]] = other.get(r[2], 0) + 1
        ttft = [r[3] for r in ok if r[3] is not None]
        tpot = [r[4] for r in ok if r[4] is not None]
        dt = max(t1 - t0, 1e-9)
        return dict(n=len(rs), ok=len(ok), rejected=len(rej), other=other, req_s=len(ok) / dt, shed=shed,
                    offered=arrived / dt,
                    tok_s=sum(r[5] for r in ok) / dt, ttft50=pct(ttft, 50), ttft99=pct(ttft, 99),
                    tpot50=pct(tpot, 50), tpot99=pct(tpot, 99),
                    rej_share=len(rej) / len(rs) if rs else 0.0)


class Arrivals:
    """The open-loop generator: requests at a rate, at most `bound` in
    flight (an arrival beyond that is shed, not queued)."""

    def __init__(self, load, bound, poisson, seed):
        self.load, self.bound, self.poisson = load, bound, poisson
        self.rng = random.Random(seed)
        self.pool = ThreadPoolExecutor(max_workers=bound)
        self.slots = threading.BoundedSemaphore(bound)
        self.out = 0
        self.i = 0

    def run(self, rate, seconds):
        t = time.time()
        end = t + seconds
        while not self.load.stop_ev.is_set():
            t += self.rng.expovariate(rate) if self.poisson else 1.0 / rate
            if t >= end:
                break
            d = t - time.time()
            if d > 0:
                time.sleep(d)
            with self.load.mu:
                self.load.arrivals.append(t)
            if not self.slots.acquire(blocking=False):
                with self.load.mu:
                    self.load.shed.append(t)
                continue
            with self.load.mu:
                self.out += 1
                self.load.peak_out = max(self.load.peak_out, self.out)
            self.pool.submit(self.one, self.i, t)
            self.i += 1
        # the phase ends at its end even when the sleeps ran late
        d = end - time.time()
        if d > 0:
            time.sleep(d)

    def one(self, i, t_arrival):
        try:
            self.load.one(i, t_arrival)
        finally:
            with self.load.mu:
                self.out -= 1
            self.slots.release()

    def close(self):
        self.pool.shutdown(wait=True)


def fmt_row(label, w):
    ms = lambda x: "%7.1f" % (1000 * x) if x == x else "      -"
    return "%-12s %6d %6d %6.1f %7.0f %s %s %s %s %6.1f%%%s%s" % (
        label, w["ok"], w["rejected"], w["req_s"], w["tok_s"], ms(w["ttft50"]), ms(w["ttft99"]), ms(w["tpot50"]),
        ms(w["tpot99"]), 100 * w["rej_share"],
        ("  offered %.1f/s, shed %d" % (w["offered"], w["shed"])) if w["offered"] else "",
        ("  other: %s" % w["other"]) if w["other"] else "")


HDR = "%-12s %6s %6s %6s %7s %7s %7s %7s %7s %7s" % ("phase", "done", "rej", "req/s", "tok/s", "ttft50", "ttft99",
                                                      "tpot50", "tpot99", "rej%")


def leak_check(c, samples, names, t_a, t_b, label, failures):
    """RSS and fds of the middle and last third of [t_a, t_b] per process:
    growth beyond the tolerance is a failure (etcd reported only)."""
    span = t_b - t_a
    mem = []
    for n in names:
        ss = samples.get(n, [])
        mid = [s for s in ss if t_a + span / 3 <= s[0] < t_a + 2 * span / 3]
        last = [s for s in ss if t_a + 2 * span / 3 <= s[0] <= t_b]
        peak = 0
        try:
            with open("/proc/%d/status" % c.pid(n)) as f:
                peak = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
        except (OSError, StopIteration, KeyError):
            pass
        if not mid or not last:
            failures.append("%s (%s): too few samples for the leak check" % (n, label))
            continue
        r_mid, r_last = statistics.median(s[1] for s in mid), statistics.median(s[1] for s in last)
        f_mid, f_last = statistics.median(s[2] for s in mid), statistics.median(s[2] for s in last)
        tol = max(8 * 1024, 0.05 * r_mid)
        leak = []
        if n != "etcd" and r_last - r_mid > tol:
            leak.append("RSS %+.1f MiB (tolerance %.1f)" % ((r_last - r_mid) / 1024, tol / 1024))
        if n != "etcd" and f_last - f_mid > 4:
            leak.append("fds %+d (tolerance 4)" % (f_last - f_mid))
        if leak:
            failures.append("%s grows after warm-up (%s): %s" % (n, label, ", ".join(leak)))
        mem.append("%-12s peak RSS %7.1f MiB   RSS mid/last third %6.1f / %6.1f MiB   fds %d / %d%s"
                   % (n, peak / 1024, r_mid / 1024, r_last / 1024, f_mid, f_last,
                      "   (reported only)" if n == "etcd" else ""))
    return mem


def main():
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 2
    opt = lambda k, d=None: args[args.index(k) + 1] if k in args else d
    build = os.path.abspath(args[0])
    loop = opt("--loop", "closed")
    if loop not in ("closed", "open", "both"):
        print("--loop: closed, open or both")
        return 2
    minutes = float(opt("--minutes", "10"))
    open_minutes = float(opt("--open-minutes", str(minutes)))
    hold = int(opt("--hold", "16"))
    max_calls = int(opt("--max-calls", "12"))
    stage_s = float(opt("--stage-s", "8"))
    deadline = float(opt("--deadline", "60"))
    rate = float(opt("--rate", "40"))
    poisson = opt("--arrivals", "poisson") == "poisson"
    bound = int(opt("--max-outstanding", "64"))
    ramp = [1, 2, 4, 8, 16] + ([32, 64] if "--long" in args else [])
    common.load_stubs()
    tmp = tempfile.mkdtemp(prefix="tandem-soak-")
    model = opt("--model") or common.make_tiny_model(build, tmp)
    c = Cluster(build, tmp, model)
    failures = []
    load = arrivals = None
    samples = {}  # name -> [(t, rss_kib, fds)]
    t_start = time.time()
    try:
        c.start_etcd()
        c.start_worker("verifier", "verifier", extra=["--max-seqs", "32"])
        c.start_worker("drafter", "drafter", extra=["--max-seqs", "32"])
        c.start_coordinator(extra=["--max-calls", str(max_calls)])
        c.wait_ready(verifiers=1, drafters=1, timeout=60)
        # the undisturbed results, one request at a time
        sl = shapes()
        expected = {}
        with grpc.insecure_channel(c.addr["coordinator"]) as ch:
            stub = common.pbg.InferenceStub(ch)
            for name, (kind, req) in sl:
                if kind == "score":
                    expected[name] = [x.SerializeToString() for x in stub.Score(req, timeout=60).results]
                else:
                    expected[name] = [t.id for m in stub.Generate(req, timeout=60) for t in m.tokens]
        load = Load(c.addr["coordinator"], expected, sl, deadline=deadline)
        names = ["coordinator", "verifier", "drafter", "etcd"]
        stop_sampler = threading.Event()

        def sampler():
            while not stop_sampler.is_set():
                now = time.time()
                for n in names:
                    if c.alive(n):
                        try:
                            samples.setdefault(n, []).append((now, proc_rss_kib(c.pid(n)), proc_fds(c.pid(n))))
                        except OSError:
                            pass
                stop_sampler.wait(2.0)
        st = threading.Thread(target=sampler, daemon=True)
        st.start()
        rows = []
        holds = []  # (label, t_from, t_to, window)
        if loop in ("closed", "both"):
            for n in ramp:
                load.set_streams(n)
                t0 = time.time()
                time.sleep(stage_s)
                rows.append(("ramp %d" % n, load.window(t0, time.time())))
                print("[soak] " + fmt_row(*rows[-1]), flush=True)
            load.set_streams(hold)
            t_hold = time.time()
            t_end = t_hold + 60 * minutes
            while time.time() < t_end:
                time.sleep(min(30.0, max(0.0, t_end - time.time())))
                w = load.window(max(t_hold, time.time() - 30), time.time())
                print("[soak] " + fmt_row("hold %.0fs" % (time.time() - t_hold), w), flush=True)
            rows.append(("hold %d" % hold, load.window(t_hold, time.time())))
            holds.append(("closed loop", t_hold, t_end, rows[-1][1]))
            load.set_streams(0)
        if loop in ("open", "both"):
            arrivals = Arrivals(load, bound, poisson, int(opt("--seed", "17")))
            for r in (rate / 4, rate / 2):
                t0 = time.time()
                arrivals.run(r, stage_s)
                rows.append(("rate %.0f/s" % r, load.window(t0, time.time())))
                print("[soak] " + fmt_row(*rows[-1]), flush=True)
            t_hold = time.time()
            t_end = t_hold + 60 * open_minutes
            while time.time() < t_end - 1:
                t0 = time.time()
                arrivals.run(rate, min(30.0, t_end - t0))
                print("[soak] " + fmt_row("rate %.0f %.0fs" % (rate, time.time() - t_hold),
                                          load.window(t0, time.time())), flush=True)
            rows.append(("rate %.0f/s held" % rate, load.window(t_hold, time.time())))
            holds.append(("open loop", t_hold, t_end, rows[-1][1]))
            arrivals.close()
        stuck = load.close()
        stop_sampler.set()
        st.join(5)
        if stuck:
            failures.append("%d client streams never returned" % stuck)
        # ---- checks ----
        allw = load.window(0, float("inf"))
        if load.wrong:
            failures.append("%d requests returned output different from the undisturbed run (%s)"
                            % (len(load.wrong), sorted(set(load.wrong))))
        if allw["other"]:
            failures.append("statuses other than OK / RESOURCE_EXHAUSTED: %s" % allw["other"])
        mem = []
        for label, t_a, t_b, hw in holds:
            if label == "closed loop" and hold > max_calls and hw["rejected"] == 0:
                failures.append("%d streams over --max-calls %d and nothing rejected" % (hold, max_calls))
            if label == "open loop" and hw["shed"] and hw["rejected"] == 0:
                failures.append("the generator shed %d arrivals (over %d in flight, --max-calls %d) and the "
                                "coordinator rejected none: it queued" % (hw["shed"], bound, max_calls))
            if hw["ok"] == 0:
                failures.append("nothing completed during the %s hold" % label)
            mem.append("%s hold:" % label)
            mem += ["  " + m for m in leak_check(c, samples, names, t_a, t_b, label, failures)]
        print("\n[soak] %s, --max-calls %d, one verifier + one drafter, %s model"
              % (", ".join(x for x in (
                  "%d streams held %.1f min" % (hold, minutes) if loop != "open" else "",
                  "open loop %.0f/s (%s) held %.1f min, at most %d in flight (peak %d)"
                  % (rate, "poisson" if poisson else "fixed", open_minutes, bound, load.peak_out)
                  if loop != "closed" else "") if x), max_calls, "given" if opt("--model") else "tiny"))
        print(HDR)
        for label, w in rows:
            print(fmt_row(label, w))
        print("\n".join(mem))
    except Exception as e:
        failures.append("ERROR %r" % e)
        raise
    finally:
        if load and not load.stop_ev.is_set():
            load.close()
        codes = c.stop_all()
        bad = {k: v for k, v in codes.items() if v not in (0, None) and not (k == "etcd" and v == -15)}
        if bad:
            failures.append("exit codes on SIGTERM: %s" % bad)
        if "--keep-logs" in args:
            print("[soak] logs kept in", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print("[soak] %s (%.0f s)" % ("PASS" if not failures else "FAIL:\n  " + "\n  ".join(failures),
                                  time.time() - t_start))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
