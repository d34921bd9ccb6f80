#!/usr/bin/python3
"""fault_suite.py — issue 17 §1: one fault at a time against a real tandem
cluster (Debian's etcd, coordinator(s), two verifier workers, a drafter
worker; each a process started here and stopped by PID, also on failure)
under a steady mix of streaming Generate (greedy and seeded, with and
without drafters) and Score traffic. Every request is checked: it completed
with exactly the tokens (Score: exactly the results) of an undisturbed run,
or failed with a gRPC status; a request that returned wrong, short or
duplicated output, or ran past its deadline, is LOST. The target is 0 lost.

Clients behave as a careful client does: a stream cut with UNAVAILABLE is
retried (up to 3 times, within the request's own deadline) with
`resume_ids` = the tokens already received and the same seed, against the
next coordinator of its list; Score is re-sent whole. Retried requests that
end identical are counted apart ("retried"). A hung coordinator cuts
nothing by itself, so the clients' channels ping (HTTP/2 keepalive every
1 s, the connection dropped after 2 s without an answer, a connection
attempt bounded to 2 s: CLIENT_OPTIONS), which turns a hang into
UNAVAILABLE; and a client starts each request at the coordinator that
answered last.

A probe (short greedy Generate, 5 s deadline) runs every 0.3 s beside the
traffic; "recover_s" is the time from the fault until the end of the last
probe after it that failed or took over 3 x (pre-fault median + 0.2 s):
the seconds until the cluster served normally again. "slowest_s" is the
longest any traffic request of the case took (a stream that had to move
off a dead or hung worker shows here); "infl" the requests in flight when
the fault was injected. Times are reported, never asserted.

Cases (in order of value; select with --cases a,b):
  verifier_kill   SIGKILL of the verifier serving streams (two running)
  verifier_stop   SIGSTOP of the busiest verifier for 8 s, then SIGCONT (lease TTL
                  10 s: the hung verifier stays registered all along)
  drafter_kill    SIGKILL of the drafter worker (then a replacement starts)
  drafter_stop    SIGSTOP of the drafter for 8 s, then SIGCONT (lease TTL 10 s)
  coordinator_kill SIGKILL of one of two coordinators on the same etcd;
                  clients fail over to the other and resume their streams
  coordinator_stop SIGSTOP of one of two coordinators for 8 s, then SIGCONT:
                  keepalive fails the clients over; the hung one serves again
  etcd_stop       etcd stopped (SIGKILL) for 10 s, restarted on its data
  etcd_wipe       etcd killed, its data wiped, restarted: everything re-registers
  partition       a verifier in its own network namespace behind a veth pair
                  (10.213.7.1/30 <-> 10.213.7.2/30); the link taken down 8 s, then up
  slow_link       a verifier reached through a delaying TCP proxy (slowproxy.py;
                  it advertises the proxy's port): 30-80 ms a chunk each way for
                  8 s, then none; request times before / during / after reported
  tp_rank_kill    a TP=2 verifier group (mpirun -np 2 tandem-worker --tp 2) beside
                  a single-process verifier, both --numerics tp-invariant (the
                  same bits): SIGKILL of rank 1 while the group holds streams; the
                  group leaves etcd, the streams end on the other verifier
  tp_leader_kill  the same with rank 0 (the rank that serves and registers)
  tp_rank_stop    SIGSTOP of rank 1 for 8 s, then SIGCONT (lease TTL 10 s)
  score_kill      `tandem score` SIGKILLed at random points five times over one
                  job; sorted by custom_id the output equals an uninterrupted run's
  disk_full       `tandem score` writing onto a small tmpfs that fills: a clear
                  error; resumed after the tmpfs is grown, the output equals the
                  uninterrupted run's

Usage: /usr/bin/python3 fault_suite.py BUILD_DIR [--quick] [--secure] [--cases a,b] [--model GGUF]
       [--seed N] [--keep-logs] [--list]
--quick: shorter traffic phases and no coordinator_stop, tp_leader_kill,
tp_rank_stop (the CTest `faults` test; `faults_secure` runs --quick
--secure --cases coordinator_stop); the default model is a tiny generated one
(td-mktiny; the TP cases a Q4_1 one) unless --model is given.
--secure: every cluster hardened as SecureServiceTest's (test_service.py):
TLS + bearer tokens on the coordinators' public ports, mutual TLS from
the coordinators to every worker (a throwaway CA made with openssl, a fresh
token per run); the clients use TLS credentials and the token, `tandem
score` --tls-ca and --token-file. After each case every process log is
searched for the token and the private keys' text: a hit fails the case.
Needs root for `partition` (ip netns) and `disk_full` (mount); they are
skipped otherwise; the TP cases skip without mpirun. Exit status 0 when
every case passed (or failed as expected), 1 otherwise.
"""
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import Cluster, wait_for  # noqa: E402
from slowproxy import DelayProxy  # noqa: E402
import grpc  # noqa: E402

CASES = ["verifier_kill", "verifier_stop", "drafter_kill", "drafter_stop", "coordinator_kill", "coordinator_stop",
         "etcd_stop", "etcd_wipe", "partition", "slow_link", "tp_rank_kill", "tp_leader_kill", "tp_rank_stop",
         "score_kill", "disk_full"]
# --quick leaves these out (the CTest `faults` time): the TP group's other
# faults cost a cluster of five processes each and test the same re-routing;
# coordinator_stop runs in CI under --secure instead (CTest `faults_secure`:
# the hung coordinator and the clients' TLS reconnects in one case)
QUICK_SKIP = ["coordinator_stop", "tp_leader_kill", "tp_rank_stop"]
TP_CASES = ("tp_rank_kill", "tp_leader_kill", "tp_rank_stop")
TWO_COORDINATORS = ("coordinator_kill", "coordinator_stop")
# case -> reason: a known tandem bug the case exposes; the case runs, its
# failure is reported, and the suite does not fail for it
EXPECTED_FAILURES = {}

LEASE_OUTLIVES_STOP = ("verifier_stop", "drafter_stop", "tp_rank_stop")  # these run with --lease-ttl 10, the others 2
REQ_DEADLINE = 30.0   # every traffic request's deadline (s)
HANG_SLACK = 5.0      # a call returning later than deadline + this is a hang
PROBE_DEADLINE = 5.0

P1 = "the quick brown fox jumps over the lazy dog and the quick brown fox"
P2 = "in a land far away there lived"
SCORE_ITEMS = [("s%d" % i, "the cat number %d" % i, " sat on the mat" * (1 + i % 3)) for i in range(6)]


def shapes():
    pb = common.pb
    g = lambda p, n, sp, d: ("gen", dict(prompt=p, max_tokens=n, ignore_eos=True, sampling=sp,
                                          speculation=pb.SpeculationParams(drafters=d)))
    greedy = pb.SamplingParams(temperature=0.0, seed=0)
    seeded = pb.SamplingParams(temperature=0.8, top_p=0.95, seed=4242)
    return {
        "greedy": g(P1, 40, greedy, "none"),
        "greedy-draft": g(P1, 160, greedy, "auto,model"),
        "seeded": g(P2, 160, seeded, "none"),
        "seeded-draft": g(P2, 160, seeded, "lookup,model"),
        "score": ("score", dict(items=[pb.ScoreItem(id=i, prompt=p, continuation=c) for i, p, c in SCORE_ITEMS],
                                top_k=2, add_bos=True)),
        "probe": g(P1, 8, greedy, "none"),
    }


# The channel options of a careful client. A killed coordinator closes its
# connections (calls fail UNAVAILABLE at once); a hung one (SIGSTOP, a
# frozen host) does not: its kernel keeps the TCP connection up and even
# accepts new ones. So the client pings: HTTP/2 keepalive every second, the
# connection dropped when a ping goes 2 s unanswered (calls on it then fail
# UNAVAILABLE and are retried elsewhere); and a new connection must finish
# its handshake within 2 s (gRPC takes the minimum reconnect backoff as the
# bound of one connection attempt). The coordinator allows pings every
# 500 ms, also between calls (common/net/net_server.c).
CLIENT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000),
                  ("grpc.min_reconnect_backoff_ms", 2000),
                  ("grpc.keepalive_time_ms", 1000), ("grpc.keepalive_timeout_ms", 2000),
                  ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]


class Client:
    """One stub per coordinator address; a request walks the list on
    UNAVAILABLE, starting at the coordinator that answered last."""

    def __init__(self, addrs, creds=None, metadata=None):
        self.addrs = list(addrs)
        if creds:
            self.chans = {a: grpc.secure_channel(a, creds, options=CLIENT_OPTIONS) for a in self.addrs}
        else:
            self.chans = {a: grpc.insecure_channel(a, options=CLIENT_OPTIONS) for a in self.addrs}
        self.stubs = {a: common.pbg.InferenceStub(c) for a, c in self.chans.items()}
        self.md = metadata  # the bearer token, when the cluster wants one
        self.pref = 0       # index of the coordinator that answered last

    def close(self):
        for c in self.chans.values():
            c.close()

    def run(self, shape, deadline=REQ_DEADLINE, retry=True):
        """Returns (result, attempts, codes, elapsed): result = token ids
        (Generate) or serialized results (Score), None when it failed;
        codes = the status code of each failed attempt."""
        kind, kw = shapes_cache[shape]
        t0 = time.time()
        ids, codes, attempts = [], [], 0
        start = self.pref
        while True:
            idx = (start + attempts) % len(self.addrs)
            addr = self.addrs[idx]
            attempts += 1
            left = deadline - (time.time() - t0)
            try:
                if left <= 0:
                    raise TimeoutError
                if kind == "score":
                    r = self.stubs[addr].Score(common.pb.ScoreRequest(**kw), timeout=left, metadata=self.md)
                    self.pref = idx
                    return [x.SerializeToString() for x in r.results], attempts, codes, time.time() - t0
                last = None
                for m in self.stubs[addr].Generate(common.pb.GenerateRequest(resume_ids=ids, **kw), timeout=left,
                                                   metadata=self.md):
                    ids.extend(t.id for t in m.tokens)
                    last = m
                if last is None or not last.done:
                    codes.append("NO_DONE")
                    return ids, attempts, codes, time.time() - t0  # checked (and found short) by the caller
                self.pref = idx
                return ids, attempts, codes, time.time() - t0
            except TimeoutError:
                codes.append("DEADLINE_EXCEEDED")
                return None, attempts, codes, time.time() - t0
            except grpc.RpcError as e:
                codes.append(e.code().name)
                if e.code() == grpc.StatusCode.UNAVAILABLE and self.pref == idx:
                    self.pref = (idx + 1) % len(self.addrs)  # the next request starts elsewhere
                if retry and e.code() == grpc.StatusCode.UNAVAILABLE and attempts < 4 and \
                        deadline - (time.time() - t0) > 1.0:
                    time.sleep(0.3)
                    continue
                return None, attempts, codes, time.time() - t0


def count_lines(path):
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


class Skip(Exception):
    """The case cannot run here (no root, no netns, no tmpfs)."""


shapes_cache = {}
# profile -> shape -> the undisturbed result. A profile is a model and a
# numerics mode ("default": the suite's model, --numerics fast; "tp": the
# Q4_1 tiny model under --numerics tp-invariant, which a TP=2 group and a
# single-process verifier compute bit for bit alike): the first case of a
# profile fixes its results, later ones must agree.
EXPECTED_BY = {}


class Tally:
    def __init__(self, expected):
        self.mu = threading.Lock()
        self.sent = self.identical = self.retried = self.lost = 0
        self.slowest = 0.0
        self.failed = {}   # code -> count
        self.lost_why = []
        self.times = []    # (t_start, t_end) of every request
        self.expected = expected

    def add(self, shape, res, attempts, codes, elapsed, deadline):
        EXPECTED = self.expected
        with self.mu:
            self.sent += 1
            self.slowest = max(self.slowest, elapsed)
            now = time.time()
            self.times.append((now - elapsed, now))
            if elapsed > deadline + HANG_SLACK:
                self.lost += 1
                self.lost_why.append("%s: hung %.1f s past a %.0f s deadline" % (shape, elapsed, deadline))
            elif res is None:
                self.failed[codes[-1]] = self.failed.get(codes[-1], 0) + 1
            elif res == EXPECTED[shape]:
                self.identical += 1
                if attempts > 1:
                    self.retried += 1
            else:
                self.lost += 1
                n = min(len(res), len(EXPECTED[shape]))
                first = next((i for i in range(n) if res[i] != EXPECTED[shape][i]), n)
                self.lost_why.append("%s: wrong output (%d items vs %d expected, first difference at %d, codes %s)"
                                     % (shape, len(res), len(EXPECTED[shape]), first, codes))


class Traffic:
    """N threads, each cycling over the request shapes until stopped; a probe thread."""

    def __init__(self, addrs, threads, expected, creds=None, metadata=None):
        self.client = Client(addrs, creds, metadata)
        self.tally = Tally(expected)
        self.stop_ev = threading.Event()
        self.probes = []  # (t_start, t_end, ok)
        self.inflight = 0
        self.mu = threading.Lock()
        self.threads = [threading.Thread(target=self.loop, args=(i,), daemon=True) for i in range(threads)]
        self.threads.append(threading.Thread(target=self.probe_loop, daemon=True))

    def loop(self, i):
        order = ["greedy", "greedy-draft", "seeded", "score", "seeded-draft"]
        k = i
        while not self.stop_ev.is_set():
            shape = order[k % len(order)]
            k += 1
            with self.mu:
                self.inflight += 1
            r = self.client.run(shape)
            with self.mu:
                self.inflight -= 1
            self.tally.add(shape, *r, REQ_DEADLINE)

    def probe_loop(self):
        while not self.stop_ev.is_set():
            t0 = time.time()
            res, attempts, codes, el = self.client.run("probe", deadline=PROBE_DEADLINE, retry=True)
            self.probes.append((t0, time.time(), res == self.tally.expected["probe"]))
            time.sleep(0.3)

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(REQ_DEADLINE + HANG_SLACK + 5)
        hung = [t for t in self.threads if t.is_alive()]
        self.client.close()
        if hung:
            with self.tally.mu:
                self.tally.lost += len(hung)
                self.tally.lost_why.append("%d client threads never returned" % len(hung))

    def recovery(self, t_fault):
        """Seconds from t_fault until service was normal again (None: never)."""
        before = [e - s for s, e, ok in self.probes if e < t_fault and ok]
        normal = 3 * ((statistics.median(before) if before else 0.5) + 0.2)
        bad = [(s, e) for s, e, ok in self.probes if e >= t_fault and (not ok or e - s > normal)]
        after = [p for p in self.probes if p[0] >= t_fault]
        if not bad:
            return 0.0
        last_bad_end = max(e for s, e in bad)
        if not any(s >= last_bad_end and ok for s, e, ok in after):
            return None
        return last_bad_end - t_fault


class Case:
    def __init__(self, suite, name):
        self.suite, self.name = suite, name
        self.row = dict(case=name, inflight=0, sent=0, identical=0, retried=0, failed={}, lost=0, recovered=None, slowest=None,
                        notes=[], status="?")

    def note(self, s):
        self.row["notes"].append(s)


class Suite:
    def __init__(self, build, model, quick, seed, keep, secure=False):
        self.build, self.model, self.quick, self.keep = build, model, quick, keep
        self.tp_model = None   # the Q4_1 model of the TP cases (made when first needed)
        self.pki = None        # with --secure: make_pki's dict
        self.rng = random.Random(seed)
        self.pre = 3.0 if quick else 8.0     # traffic before the fault (s)
        self.post = 6.0 if quick else 20.0   # traffic after the fault is healed (s)
        self.nthreads = 3 if quick else 4
        self.rows = []
        self.root = tempfile.mkdtemp(prefix="tandem-faults-")
        self.cleanups = []
        if secure:
            d = os.path.join(self.root, "pki")
            os.mkdir(d)
            # the partitioned verifier registers its namespace address: the
            # certificate must name it too
            self.pki = common.make_pki(d, extra_ips=[self.NS_PEER])

    # ---- cluster helpers ----
    def cluster(self, tmp, coordinators=1, etcd_extra_hosts=(), skip_verifier_b=False, ttl="2"):
        c = self.cur = Cluster(self.build, tmp, self.model, ttl=ttl, etcd_extra_hosts=etcd_extra_hosts,
                               tls=self.pki)
        c.start_etcd()
        c.start_worker("verifier-a", "verifier")
        if not skip_verifier_b:
            c.start_worker("verifier-b", "verifier")
        c.start_worker("drafter", "drafter")
        names = ["coordinator"] + ["coordinator-%d" % i for i in range(2, coordinators + 1)]
        for n in names:
            c.start_coordinator(n)
        return c, names

    def tp_cluster(self, tmp, ttl):
        """A TP=2 verifier group beside a single-process verifier, both
        --numerics tp-invariant (the group computes the single process's
        bits, so a stream may end on either), a drafter, a coordinator."""
        if not shutil.which("mpirun"):
            raise Skip("mpirun not installed")
        if self.tp_model is None:
            # Q4_1 throughout: the mixed tiny model's K-quant blocks are wider
            # than a rank's attention inputs, a split tandem refuses
            self.tp_model = self.model_tp_path()
        c = self.cur = Cluster(self.build, tmp, self.tp_model, ttl=ttl, tls=self.pki)
        c.start_etcd()
        c.start_worker("verifier-a", "verifier", extra=["--numerics", "tp-invariant"])
        c.start_tp_group("verifier-tp", 2, extra=["--numerics", "tp-invariant"])
        c.start_worker("drafter", "drafter")
        c.start_coordinator("coordinator")
        return c, ["coordinator"]

    def model_tp_path(self):
        if self.user_model:
            return self.model
        path = os.path.join(self.root, "tiny-q41.gguf")
        subprocess.run([os.path.join(self.build, "td-mktiny"), path, "--ctx", "2048", "--type", "Q4_1"], check=True,
                       capture_output=True)
        return path

    def check_expected(self, client, case, profile="default"):
        """The undisturbed pass: every shape once; the first case of a
        profile fixes its results, later ones must agree with them."""
        EXPECTED = EXPECTED_BY.setdefault(profile, {})
        for shape in shapes_cache:
            res, attempts, codes, _ = client.run(shape, retry=False)
            assert res is not None and not codes, "undisturbed %s failed: %s" % (shape, codes)
            if shape not in EXPECTED:
                EXPECTED[shape] = res
            elif res != EXPECTED[shape]:
                raise AssertionError("undisturbed %s differs from the first case's" % shape)
        if "local" not in EXPECTED:  # greedy text against the in-process CLI once
            model = self.model if profile == "default" else self.tp_model
            numerics = ["--numerics", "tp-invariant"] if profile == "tp" else []
            r = subprocess.run([os.path.join(self.build, "tandem"), "generate", "--model", model, "--prompt", P1,
                                "--max-tokens", "40", "--ignore-eos", "--threads", "1"] + numerics, capture_output=True)
            assert r.returncode == 0, r.stderr
            kind, kw = shapes_cache["greedy"]
            text = "".join(m.text for m in client.stubs[client.addrs[0]].Generate(
                common.pb.GenerateRequest(**kw), timeout=REQ_DEADLINE, metadata=client.md))
            want = r.stdout.decode("utf-8", errors="replace").encode()
            # a message's text ends at its first NUL character (the
            # coordinator hands protobuf-c a C string; token ids stay
            # exact), and the Q4_1 tiny model's greedy output runs into NUL
            # tokens: compare what comes before the first NUL
            if b"\0" in want:
                cut = want.split(b"\0")[0]
                assert cut and text.encode().startswith(cut) and "\0" not in text, \
                    "service greedy text differs from tandem generate's (before its first NUL)"
            else:
                assert text.encode() == want, "service greedy text differs from tandem generate's"
            EXPECTED["local"] = True
        return EXPECTED

    def sequences(self, c, names):
        n = 0
        for name in names:
            if c.alive(name):
                with c.channel(name) as ch:
                    n += common.wpbg.WorkerStub(ch).Stats(common.wpb.StatsRequest(), timeout=3).sequences
        return n

    def busy_verifier(self, c, names=("verifier-a", "verifier-b")):
        """The verifier holding the most sequences now, and how many."""
        best = (names[0], -1)
        for n in names:
            with c.channel(n) as ch:
                k = common.wpbg.WorkerStub(ch).Stats(common.wpb.StatsRequest(), timeout=3).sequences
            if k > best[1]:
                best = (n, k)
        return best

    def run_traffic_case(self, case, c, coords, inject, heal=None, hold=0.0, after=None):
        """Traffic on; inject(); (hold s; heal()); post s; traffic off."""
        tr = Traffic([c.addr[n] for n in coords], self.nthreads, case.expected, c.creds(), c.metadata())
        tr.start()
        try:
            time.sleep(self.pre)
            t_fault = time.time()
            case.row["inflight"] = tr.inflight
            inject()
            t_heal = time.time()
            if heal:
                time.sleep(hold)
                heal()
                t_heal = time.time()
            time.sleep(self.post)
        finally:
            tr.stop()
        t = tr.tally
        case.window = (t_fault, t_heal, t.times)
        case.row.update(sent=t.sent, identical=t.identical, retried=t.retried, failed=dict(t.failed), lost=t.lost, slowest=t.slowest,
                        recovered=tr.recovery(t_fault))
        for w in t.lost_why[:5]:
            case.note("LOST " + w)
        if after:
            after()
        ok = t.lost == 0 and case.row["recovered"] is not None and t.identical > 0
        if case.row["recovered"] is None:
            case.note("probes never succeeded again")
        return ok

    def released(self, c, names, case):
        try:
            wait_for(lambda: self.sequences(c, names) == 0, 30, "every verifier sequence to be released")
        except AssertionError as e:
            case.note(str(e))
            return False
        return True

    # ---- cases ----
    def case_verifier_kill(self, case, c):
        def inject():
            victim, k = self.busy_verifier(c)
            case.note("SIGKILL %s holding %d sequences" % (victim, k))
            c.send(victim, signal.SIGKILL)
            c.procs[victim].wait()
        ok = self.run_traffic_case(case, c, ["coordinator"], inject)
        live = [n for n in ("verifier-a", "verifier-b") if c.alive(n)]
        return self.released(c, live, case) and ok

    def case_verifier_stop(self, case, c):
        victim = []

        def inject():
            v, k = self.busy_verifier(c)
            victim.append(v)
            case.note("SIGSTOP %s holding %d sequences for 8 s" % (v, k))
            c.send(v, signal.SIGSTOP)
        ok = self.run_traffic_case(case, c, ["coordinator"], inject,
                                   heal=lambda: c.send(victim[0], signal.SIGCONT), hold=8.0)
        c.wait_ready(verifiers=2, timeout=30)
        return self.released(c, ["verifier-a", "verifier-b"], case) and ok

    def case_drafter_kill(self, case, c):
        def heal():
            c.stop("drafter", signal.SIGKILL)
            c.start_worker("drafter", "drafter")
        ok = self.run_traffic_case(case, c, ["coordinator"], lambda: c.send("drafter", signal.SIGKILL),
                                   heal=heal, hold=4.0)
        c.wait_ready(verifiers=2, drafters=1, timeout=30)
        return self.released(c, ["verifier-a", "verifier-b"], case) and ok

    def case_drafter_stop(self, case, c):
        ok = self.run_traffic_case(case, c, ["coordinator"], lambda: c.send("drafter", signal.SIGSTOP),
                                   heal=lambda: c.send("drafter", signal.SIGCONT), hold=8.0)
        return self.released(c, ["verifier-a", "verifier-b"], case) and ok

    def case_coordinator_kill(self, case, c):
        ok = self.run_traffic_case(case, c, ["coordinator", "coordinator-2"],
                                   lambda: c.send("coordinator", signal.SIGKILL))
        # the dead coordinator's sequences are reclaimed by the workers' idle timeout
        return self.released(c, ["verifier-a", "verifier-b"], case) and ok

    def case_coordinator_stop(self, case, c):
        """A hung coordinator: its connections stay up, nothing answers. The
        clients' keepalive drops them (calls fail UNAVAILABLE), the streams
        resume on the other coordinator; after SIGCONT the hung one must
        serve again by itself."""
        def inject():
            case.note("SIGSTOP coordinator with %d client requests in flight for 8 s" % case.row["inflight"])
            c.send("coordinator", signal.SIGSTOP)
        ok = self.run_traffic_case(case, c, ["coordinator", "coordinator-2"], inject,
                                   heal=lambda: c.send("coordinator", signal.SIGCONT), hold=8.0)
        c.wait_ready("coordinator", verifiers=2, drafters=1, timeout=30)
        cl = Client([c.addr["coordinator"]], c.creds(), c.metadata())
        try:
            res, attempts, codes, _ = cl.run("greedy-draft", retry=False)
        finally:
            cl.close()
        if res != case.expected["greedy-draft"]:
            case.note("the resumed coordinator did not serve normally: %s" % codes)
            ok = False
        return self.released(c, ["verifier-a", "verifier-b"], case) and ok

    def latency_note(self, case, label):
        """Median / p90 / max time of the requests started before the fault,
        while it lasted, after it was healed."""
        t_fault, t_heal, times = case.window
        parts = []
        for name, sel in (("before", lambda s, e: s < t_fault), ("during", lambda s, e: t_fault <= s < t_heal),
                          ("after", lambda s, e: s >= t_heal)):
            d = sorted(e - s for s, e in times if sel(s, e))
            if d:
                parts.append("%s %.0f / %.0f / %.0f ms (%d)" % (name, 1000 * statistics.median(d),
                                                               1000 * d[int(0.9 * (len(d) - 1))], 1000 * d[-1],
                                                               len(d)))
        case.note("%srequest time median / p90 / max: %s" % (label, ", ".join(parts)))

    def case_slow_link(self, case, c):
        """verifier-b reached through the delaying proxy (it advertises the
        proxy's port); 30-80 ms a chunk each way for 8 s, then 0 again.
        Reported: a Worker.Stats round trip through the proxy before and
        while slowed (the link's own added latency), forward passes per
        second on each verifier (where the coordinator sent the work), and
        request times before / during / after."""
        proxy = self.slow_proxy
        c.addr["verifier-b-proxied"] = "127.0.0.1:%d" % proxy.port
        mark = {}

        def stats(name):
            with c.channel(name) as ch:
                return common.wpbg.WorkerStub(ch).Stats(common.wpb.StatsRequest(), timeout=5)

        def rtt():
            with c.channel("verifier-b-proxied") as ch:
                stub = common.wpbg.WorkerStub(ch)
                stub.Stats(common.wpb.StatsRequest(), timeout=5)  # connected
                d = []
                for _ in range(5):
                    t0 = time.time()
                    stub.Stats(common.wpb.StatsRequest(), timeout=5)
                    d.append(time.time() - t0)
                return statistics.median(d)

        def snap(key):
            mark[key] = (time.time(), stats("verifier-a").passes, stats("verifier-b").passes, proxy.snapshot())

        def inject():
            snap("start")
            case.note("link to verifier-b slowed (30-80 ms a chunk each way) with %d sequences on it"
                      % self.busy_verifier(c, ["verifier-b"])[1])
            mark["rtt0"] = rtt()
            proxy.set_delay(30, 80)
            mark["rtt1"] = rtt()

        def heal():
            snap("healed")
            proxy.set_delay(0, 0)
        t_pre = time.time()
        mark["pre"] = (t_pre, stats("verifier-a").passes, stats("verifier-b").passes, proxy.snapshot())
        ok = self.run_traffic_case(case, c, ["coordinator"], inject, heal=heal, hold=8.0)
        (t0, a0, b0, _), (t1, a1, b1, p1), (t2, a2, b2, p2) = mark["pre"], mark["start"], mark["healed"]
        case.note("Worker.Stats round trip through the proxy: %.1f ms before, %.1f ms slowed"
                  % (1000 * mark["rtt0"], 1000 * mark["rtt1"]))
        case.note("forward passes/s verifier-a / verifier-b: %.0f / %.0f before, %.0f / %.0f slowed"
                  % ((a1 - a0) / (t1 - t0), (b1 - b0) / (t1 - t0), (a2 - a1) / (t2 - t1), (b2 - b1) / (t2 - t1)))
        case.note("through the slow link: %d chunks, %d bytes to the verifier, %d back"
                  % (p2["delayed"] - p1["delayed"], p2["bytes_up"] - p1["bytes_up"],
                     p2["bytes_down"] - p1["bytes_down"]))
        self.latency_note(case, "")
        if b2 - b1 == 0:
            case.note("verifier-b made no forward pass while slowed: the case proves nothing")
            ok = False
        return self.released(c, ["verifier-a", "verifier-b"], case) and ok

    def tp_fault(self, case, c, rank, sig):
        """SIGKILL or SIGSTOP (8 s) of one rank of the TP group while it
        holds streams. Kill: the group must leave etcd (mpirun ends the job)
        and every stream end on verifier-a identical, or with a status."""
        group = "verifier-tp"
        ranks = c.rank_pids[group]
        left = {}

        def watch(t0):
            while time.time() - t0 < 30:
                if not any(w.get("id") == group for w in c.registered()):
                    left["s"] = time.time() - t0
                    return
                time.sleep(0.2)

        def inject():
            # the case proves something only with streams on the group: the
            # fault follows the poll that saw one at once (asking again
            # would race with the stream's end; the coordinator favours the
            # faster verifier-a, so one may take a while under load)
            seen = {"k": 0}

            def on_group():
                seen["k"] = self.sequences(c, [group])
                return seen["k"] > 0
            try:
                wait_for(on_group, 30, "a sequence on the TP group")
            except AssertionError:
                pass
            k = seen["k"]
            case.note("%s rank %d (pid %d) of the TP=2 group holding %d sequences%s"
                      % ("SIGKILL" if sig == signal.SIGKILL else "SIGSTOP", rank, ranks[rank], k,
                         " for 8 s" if sig == signal.SIGSTOP else ""))
            case.row["on_group"] = k
            os.kill(ranks[rank], sig)
            if sig == signal.SIGKILL:
                th = threading.Thread(target=watch, args=(time.time(),), daemon=True)
                th.start()
                left["thread"] = th
        heal = (lambda: os.kill(ranks[rank], signal.SIGCONT)) if sig == signal.SIGSTOP else None
        ok = self.run_traffic_case(case, c, ["coordinator"], inject, heal=heal, hold=8.0)
        if not case.row.get("on_group"):
            case.note("no sequence on the TP group at the fault: the case proves nothing")
            ok = False
        if sig == signal.SIGKILL:
            left["thread"].join(35)
            if "s" in left:
                case.note("the group left etcd %.1f s after the kill (lease TTL %s s)" % (left["s"], c.ttl))
            else:
                case.note("the group is still registered 30 s after the kill")
                ok = False
            mp = c.procs.pop(group)  # mpirun ends the job when a rank dies
            try:
                mp.wait(15)
                case.note("mpirun exited with %s" % mp.returncode)
            except subprocess.TimeoutExpired:
                case.note("mpirun still running 15 s after the case")
                mp.kill()
                mp.wait()
                ok = False
            alive = [r for r, pid in ranks.items() if os.path.exists("/proc/%d" % pid) and
                     open("/proc/%d/stat" % pid).read().split()[2] != "Z"]
            if alive:
                case.note("ranks %s outlived the job" % alive)
                ok = False
            c.wait_ready(verifiers=1, drafters=1, timeout=30)
            live = ["verifier-a"]
        else:
            c.wait_ready(verifiers=2, drafters=1, timeout=30)
            live = ["verifier-a", group]
        return self.released(c, live, case) and ok

    def case_tp_rank_kill(self, case, c):
        return self.tp_fault(case, c, 1, signal.SIGKILL)

    def case_tp_leader_kill(self, case, c):
        return self.tp_fault(case, c, 0, signal.SIGKILL)

    def case_tp_rank_stop(self, case, c):
        return self.tp_fault(case, c, 1, signal.SIGSTOP)

    def case_etcd_stop(self, case, c):
        ok = self.run_traffic_case(case, c, ["coordinator"], lambda: c.stop("etcd", signal.SIGKILL),
                                   heal=lambda: c.start_etcd(), hold=10.0)
        wait_for(lambda: len(c.registered()) == 3, 40, "the registrations to come back")
        c.wait_ready(verifiers=2, drafters=1, timeout=30)
        return self.released(c, ["verifier-a", "verifier-b"], case) and ok

    def case_etcd_wipe(self, case, c):
        def inject():
            c.stop("etcd", signal.SIGKILL)
            c.start_etcd(wipe=True)
        ok = self.run_traffic_case(case, c, ["coordinator"], inject)
        wait_for(lambda: len(c.registered()) == 3, 40, "every worker to register again in the wiped etcd")
        c.wait_ready(verifiers=2, drafters=1, timeout=30)
        return self.released(c, ["verifier-a", "verifier-b"], case) and ok

    # partition: a verifier in its own namespace behind a veth pair
    NS_HOST, NS_PEER = "10.213.7.1", "10.213.7.2"

    def netns_setup(self):
        tag = "%d" % (os.getpid() % 100000)
        ns, h, p = "tdf-" + tag, "tdfh" + tag, "tdfp" + tag
        # the /30 must be free on this host: no route may cover it yet
        r = subprocess.run(["ip", "-o", "route", "show", "to", "match", self.NS_PEER], capture_output=True, text=True)
        if any(not line.startswith("default") for line in r.stdout.splitlines()):
            raise RuntimeError("10.213.7.0/30 is already routed here: " + r.stdout)
        cmds = [["ip", "netns", "add", ns],
                ["ip", "link", "add", h, "type", "veth", "peer", "name", p],
                ["ip", "link", "set", p, "netns", ns],
                ["ip", "addr", "add", self.NS_HOST + "/30", "dev", h],
                ["ip", "link", "set", h, "up"],
                ["ip", "netns", "exec", ns, "ip", "addr", "add", self.NS_PEER + "/30", "dev", p],
                ["ip", "netns", "exec", ns, "ip", "link", "set", p, "up"],
                ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]]

        def teardown():
            subprocess.run(["ip", "link", "del", h], capture_output=True)  # also removes the peer
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.cleanups.append(teardown)
        for cmd in cmds:
            subprocess.run(cmd, check=True, capture_output=True)
        return ns, h, teardown

    def case_partition(self, case, c):
        ns, hostif, teardown = self.partition_env
        port = common.free_port()
        c.start_worker("verifier-b", "verifier", listen="%s:%d" % (self.NS_PEER, port),
                       etcd="%s:%d" % (self.NS_HOST, c.etcd_port),
                       extra=["--advertise", "%s:%d" % (self.NS_PEER, port)], prefix=["ip", "netns", "exec", ns])
        c.wait_ready(verifiers=2, drafters=1, timeout=60)
        reg = [w for w in c.registered() if w.get("id") == "verifier-b"]
        assert reg and reg[0]["address"].startswith(self.NS_PEER), "verifier-b advertises %s" % reg
        # streams must be on the partitioned verifier: it is SIGSTOP-free, so
        # the least-loaded pick spreads streams over both
        def inject():
            case.note("link down with %d sequences on the partitioned verifier" % self.busy_verifier(c, ["verifier-b"])[1])
            subprocess.run(["ip", "link", "set", hostif, "down"], check=True)
        ok = self.run_traffic_case(case, c, ["coordinator"], inject,
                                   heal=lambda: subprocess.run(["ip", "link", "set", hostif, "up"], check=True),
                                   hold=8.0)
        c.wait_ready(verifiers=2, drafters=1, timeout=40)
        return self.released(c, ["verifier-a", "verifier-b"], case) and ok

    # tandem score: killed five times; disk full
    def score_items(self, tmp, n):
        src = os.path.join(tmp, "items.jsonl")
        with open(src, "w") as f:
            for i in range(n):
                f.write(json.dumps({"custom_id": "item-%04d" % i, "prompt": "the cat number %d" % i,
                                    "continuation": " sat on the mat and looked" * (1 + i % 4)}) + "\n")
        return src

    def score_argv(self, c, src, out):
        sec = ["--tls-ca", self.pki["ca.pem"], "--token-file", self.pki["client-token"]] if self.pki else []
        return [os.path.join(self.build, "tandem"), "score", "--server", c.addr["coordinator"], "--in", src,
                "--out", out, "--batch", "4", "--concurrency", "2", "--top-k", "2"] + sec

    @staticmethod
    def sorted_lines(path):
        with open(path, "rb") as f:
            lines = f.read().splitlines()
        return sorted(lines, key=lambda l: json.loads(l)["custom_id"])

    def reference_scores(self, c, tmp, n):
        src = self.score_items(tmp, n)
        ref = os.path.join(tmp, "ref.jsonl")
        r = subprocess.run(self.score_argv(c, src, ref), capture_output=True, timeout=300)
        assert r.returncode == 0, "uninterrupted score run: %s" % r.stderr.decode(errors="replace")[-500:]
        want = self.sorted_lines(ref)
        assert len(want) == n
        return src, want

    def case_score_kill(self, case, c):
        n = 1000 if self.quick else 3000
        src, want = self.reference_scores(c, case.tmp, n)
        out = os.path.join(case.tmp, "killed.jsonl")
        argv = self.score_argv(c, src, out)
        kills = 0
        t0 = time.time()
        # five random points of the job, in items written
        points = sorted(self.rng.sample(range(n // 20, n - n // 20), 5))
        log = open(os.path.join(case.tmp, "score.log"), "ab")
        for k in points:
            p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)
            try:
                while p.poll() is None and count_lines(out) < k and time.time() - t0 < 300:
                    time.sleep(0.005)
                if p.poll() is None:
                    p.kill()
                    kills += 1
            finally:
                if p.poll() is None:
                    p.kill()
                p.wait()
        log.close()
        case.note("SIGKILL at %s items written" % points)
        r = subprocess.run(argv, capture_output=True, timeout=300)
        got = self.sorted_lines(out)
        ids = [json.loads(l)["custom_id"] for l in got]
        dup = len(ids) - len(set(ids))
        # identical: items whose line equals the uninterrupted run's; the rest
        # (missing, duplicated, different) are lost
        wanted = {json.loads(l)["custom_id"]: l for l in want}
        same = sum(1 for l in set(got) if wanted.get(json.loads(l)["custom_id"]) == l)
        case.row.update(sent=n, identical=same if not dup else 0, lost=n - same + dup, recovered=0.0)
        case.note("%d SIGKILLs; final run exit %d" % (kills, r.returncode))
        if dup:
            case.note("%d duplicated items" % dup)
        if os.path.exists(out + ".errors.jsonl") and os.path.getsize(out + ".errors.jsonl"):
            case.note("errors file not empty")
        return r.returncode == 0 and got == want and kills == 5

    def case_disk_full(self, case, c):
        n = 200 if self.quick else 600
        src, want = self.reference_scores(c, case.tmp, n)
        ref_bytes = sum(len(l) + 1 for l in want)
        mnt = os.path.join(case.tmp, "small")
        os.mkdir(mnt)
        size_kib = max(8, ref_bytes // 3 // 1024)  # about a third of the output fits
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dk" % size_kib, "tandem-faults", mnt],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise Skip("cannot mount a tmpfs: " + r.stderr.strip())
        self.cleanups.append(lambda: subprocess.run(["umount", "-l", mnt], capture_output=True))
        try:
            out = os.path.join(mnt, "scores.jsonl")
            argv = self.score_argv(c, src, out)
            r = subprocess.run(argv, capture_output=True, timeout=300)
            err = r.stderr.decode(errors="replace")
            clear = r.returncode != 0 and "No space left on device" in err
            case.note("full: exit %d, %r" % (r.returncode, [l for l in err.splitlines() if "stopped" in l][-1:]))
            # what the failed run left: whole lines, then at most one torn line (cut on resume)
            with open(out, "rb") as f:
                left = f.read().split(b"\n")[:-1]
            broken = 0
            for l in left:
                try:
                    json.loads(l)["custom_id"]
                except (ValueError, KeyError):
                    broken += 1
            case.note("the full disk left %d whole lines, %d broken ones" % (len(left) - broken, broken))
            clear = clear and broken == 0
            subprocess.run(["mount", "-o", "remount,size=%dk" % (4 * ref_bytes // 1024 + 64), mnt], check=True)
            r2 = subprocess.run(argv, capture_output=True, timeout=300)
            got = self.sorted_lines(out)
        finally:
            subprocess.run(["umount", mnt], capture_output=True)
        ids = [json.loads(l)["custom_id"] for l in got]
        dup = len(ids) - len(set(ids))
        wanted = {json.loads(l)["custom_id"]: l for l in want}
        same = sum(1 for l in set(got) if wanted.get(json.loads(l)["custom_id"]) == l)
        case.row.update(sent=n, identical=same if not dup else 0,
                        failed={"ENOSPC(first run)": 1} if clear else {}, lost=n - same + dup, recovered=0.0)
        case.note("resumed after growing the tmpfs: exit %d" % r2.returncode)
        return clear and r2.returncode == 0 and got == want

    # ---- running ----
    def run_case(self, name):
        case = Case(self, name)
        case.tmp = os.path.join(self.root, name)
        os.mkdir(case.tmp)
        c = self.cur = None   # self.cur: the cluster, as soon as it exists (stopped also if setup fails)
        ok = False
        leaks = []
        self.partition_env = None
        try:
            if name in ("partition", "disk_full") and os.geteuid() != 0:
                case.row["status"] = "skipped (needs root)"
                return case
            if name == "partition":
                try:
                    self.partition_env = self.netns_setup()
                except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
                    case.row["status"] = "skipped (no netns/veth: %s)" % (getattr(e, "stderr", b"") or e)
                    return case
            # a hung worker's lease outlives the 8 s stop: it stays listed
            ttl = "10" if name in LEASE_OUTLIVES_STOP else "2"
            profile = "tp" if name in TP_CASES else "default"
            if profile == "tp":
                c, coords = self.tp_cluster(case.tmp, ttl)
            else:
                c, coords = self.cluster(case.tmp, coordinators=2 if name in TWO_COORDINATORS else 1,
                                         etcd_extra_hosts=[self.NS_HOST] if name == "partition" else (),
                                         skip_verifier_b=name in ("partition", "slow_link"), ttl=ttl)
            if name == "slow_link":
                # verifier-b advertises the proxy's port: the coordinator's
                # channel to it crosses the proxy, its etcd traffic does not
                port = common.free_port()
                self.slow_proxy = DelayProxy(port)
                self.cleanups.append(self.slow_proxy.stop)
                c.start_worker("verifier-b", "verifier", listen="127.0.0.1:%d" % port,
                               extra=["--advertise", "127.0.0.1:%d" % self.slow_proxy.port])
            for n in coords:
                c.wait_ready(n, verifiers=None if name == "partition" else 2,
                             drafters=1, timeout=60)
            if name != "partition":
                wait_for(lambda: len(c.registered()) == 3, 30, "three registrations")
            else:
                c.wait_ready(verifiers=1, drafters=1, timeout=30)
            cl = Client([c.addr[coords[0]]], c.creds(), c.metadata())
            try:
                case.expected = self.check_expected(cl, case, profile)
            finally:
                cl.close()
            ok = getattr(self, "case_" + name)(case, c)
        except Skip as e:
            case.row["status"] = "skipped (%s)" % e
        except Exception as e:
            case.note("ERROR " + "".join(traceback.format_exception_only(type(e), e)).strip())
            if os.environ.get("TD_FAULTS_DEBUG"):
                traceback.print_exc()
        finally:
            c = c or self.cur
            if c:
                codes = c.stop_all()
                # (mpirun answers SIGTERM with 1: it forwards the signal, and
                # a follower rank blocked in MPI dies of it)
                bad = {k: v for k, v in codes.items() if v not in (0, -9, None) and not (k == "etcd" and v in (-15, -9))
                       and not (k in c.rank_pids and v == 1)}
                if bad:
                    case.note("exit codes on SIGTERM: %s" % bad)
                    for k in bad:
                        tail = open(c.log(k), errors="replace").read()[-1500:]
                        print("---- %s/%s.log (exit %s) ----\n%s" % (name, k, bad[k], tail))
            for f in reversed(self.cleanups):
                f()
            self.cleanups = []
            if self.pki:
                # every log of the case, read after its processes ended
                leaks = common.secrets_in_logs(case.tmp, self.pki)
                for l in leaks:
                    case.note("SECRET IN LOG " + l)
        ok = ok and not leaks
        if case.row["status"] == "?":
            if name in EXPECTED_FAILURES:
                case.row["status"] = "XPASS" if ok else "xfail"
                case.note("expected failure: " + EXPECTED_FAILURES[name])
            else:
                case.row["status"] = "PASS" if ok else "FAIL"
        if not ok and case.row["status"] == "FAIL":
            for f in sorted(os.listdir(case.tmp)):
                if f.endswith(".log"):
                    lines = [l for l in open(os.path.join(case.tmp, f), errors="replace").read().splitlines()
                             if " ERROR " in l or " WARN " in l][-6:]
                    if lines:
                        print("---- %s/%s (warnings and errors) ----\n%s" % (name, f, "\n".join(lines)))
        return case

    def table(self):
        hdr = "%-17s %5s %6s %6s %5s %-22s %5s %9s %9s  %s" % ("fault", "infl", "sent", "ident", "retry",
                                                             "failed (status)", "lost", "recover_s", "slowest_s",
                                                             "result")
        out = [hdr, "-" * len(hdr)]
        for r in self.rows:
            failed = ",".join("%s:%d" % kv for kv in sorted(r["failed"].items())) or "-"
            rec = "never" if r["recovered"] is None else "%.1f" % r["recovered"]
            slow = "-" if r["slowest"] is None else "%.1f" % r["slowest"]
            out.append("%-17s %5d %6d %6d %5d %-22s %5d %9s %9s  %s" % (
                r["case"], r["inflight"], r["sent"], r["identical"], r["retried"], failed, r["lost"], rec, slow,
                r["status"]))
            for note in r["notes"]:
                out.append("    " + note)
        return "\n".join(out)


def main():
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 2
    if "--list" in args:
        print("\n".join(CASES))
        return 0
    build = os.path.abspath(args[0])
    opt = lambda k, d=None: args[args.index(k) + 1] if k in args else d
    cases = opt("--cases", ",".join(c for c in CASES if "--quick" not in args or c not in QUICK_SKIP)).split(",")
    unknown = [x for x in cases if x not in CASES]
    if unknown:
        print("unknown cases: %s (--list)" % unknown)
        return 2
    common.load_stubs()
    shapes_cache.update(shapes())
    if "--secure" in args and not shutil.which("openssl"):
        print("--secure needs openssl")
        return 2
    suite = Suite(build, None, "--quick" in args, int(opt("--seed", "17")), "--keep-logs" in args,
                  secure="--secure" in args)
    suite.user_model = opt("--model")
    suite.model = opt("--model") or common.make_tiny_model(build, suite.root)
    t0 = time.time()
    try:
        for name in cases:
            ts = time.time()
            case = suite.run_case(name)
            suite.rows.append(case.row)
            print("[faults] %-17s %s (%.0f s)" % (name, case.row["status"], time.time() - ts), flush=True)
    finally:
        for f in reversed(suite.cleanups):
            f()
        if suite.keep:
            print("[faults] logs kept in", suite.root)
        else:
            shutil.rmtree(suite.root, ignore_errors=True)
    print("\n[faults] results (%s%s, %.0f s in all)\n%s" % ("quick" if suite.quick else "full",
                                                            ", TLS + tokens + mTLS" if suite.pki else "",
                                                            time.time() - t0, suite.table()))
    bad = [r for r in suite.rows if r["status"] in ("FAIL", "XPASS")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
