#!/usr/bin/python3
"""test_service.py — the tandem service as its users meet it: real processes
on loopback (Debian's etcd, a coordinator, two verifier workers and a drafter
worker) and an independent client, Python's grpcio (Debian's, under
/usr/bin/python3) with stubs generated here from our .proto files at test
time (nothing generated is committed).

Checked against the in-process CLI on the same model: Generate's text equals
`tandem generate`'s (greedy and seeded sampling, every drafter, resumed
streams), Score's logprobs equal `tandem perplexity --per-token`'s bit for
bit, Tokenize equals `tandem tokenize`. Then bad input (a gRPC status naming
the field), cancellation and deadlines (the worker's sequence count returns
to 0), `tandem score` killed and resumed (every item exactly once), a
verifier killed mid-stream (the stream completes with identical tokens),
etcd stopped for longer than the lease TTL and restarted (registrations
return, requests flow), and the last verifier killed (UNAVAILABLE, no hang).

SecureServiceTest: the same service with every port protected — TLS on the
coordinator's public port with bearer tokens, mutual TLS from the
coordinator to its verifier — reached by grpcio over TLS and by `tandem
generate --server --tls-ca --token-file`; no token is UNAUTHENTICATED, the
plaintext health port still answers, and no log holds the token or the key.

Usage: /usr/bin/python3 test_service.py BUILD_DIR [--default-model PATH]
Every process is started here and stopped by PID, also on failure.
"""
import json
import re
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join(HERE, "..", "..", "proto")
BUILD = None
DEFAULT_MODEL = None
TTL = "2"

import grpc  # noqa: E402  (Debian's python3-grpcio)


def gen_stubs(out):
    from grpc_tools import protoc

    args = ["protoc", "-I" + PROTO, "--python_out=" + out, "--grpc_python_out=" + out,
            os.path.join(PROTO, "tandem", "v1", "inference.proto"), os.path.join(PROTO, "tandem", "v1", "worker.proto")]
    assert protoc.main(args) == 0, "protoc failed on tandem protos"
    hsrc = os.path.join(PROTO, "grpc", "health", "v1")  # own root: clear of grpcio's "grpc" package
    assert protoc.main(["protoc", "-I" + hsrc, "--python_out=" + out, "--grpc_python_out=" + out,
                        os.path.join(hsrc, "health.proto")]) == 0
    sys.path.insert(0, out)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Cluster:
    """Processes of one test cluster, each remembered by PID."""

    def __init__(self, tmp, model):
        self.tmp, self.model = tmp, model
        self.procs = {}  # name -> Popen
        self.addr = {}   # name -> address
        self.etcd_port, self.peer_port = free_port(), free_port()
        self.etcd = "127.0.0.1:%d" % self.etcd_port

    def log(self, name):
        return os.path.join(self.tmp, name + ".log")

    def start(self, name, argv, env=None):
        f = open(self.log(name), "ab")
        self.procs[name] = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env)
        f.close()
        return self.procs[name]

    def start_etcd(self, wipe=False):
        data = os.path.join(self.tmp, "etcd-data")
        if wipe:
            shutil.rmtree(data, ignore_errors=True)
        self.start("etcd", ["etcd", "--name", "t", "--data-dir", data,
                            "--listen-client-urls", "http://" + self.etcd, "--advertise-client-urls", "http://" + self.etcd,
                            "--listen-peer-urls", "http://127.0.0.1:%d" % self.peer_port,
                            "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % self.peer_port,
                            "--initial-cluster", "t=http://127.0.0.1:%d" % self.peer_port])
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.etcdctl("endpoint", "health").returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("etcd did not start: " + open(self.log("etcd")).read()[-2000:])

    def etcdctl(self, *args):
        env = dict(os.environ, ETCDCTL_API="3")
        return subprocess.run(["etcdctl", "--endpoints", self.etcd] + list(args), capture_output=True, text=True, env=env)

    def start_worker(self, name, role, extra=()):
        port = free_port()
        self.addr[name] = "127.0.0.1:%d" % port
        self.start(name, [os.path.join(BUILD, "tandem-worker"), "--role", role, "--model", self.model,
                          "--listen", self.addr[name], "--etcd", self.etcd, "--cluster", "t", "--id", name,
                          "--lease-ttl", TTL, "--threads", "1", "--max-seqs", "8", "--idle-timeout", "5"] + list(extra))

    def start_coordinator(self, extra=()):
        port, hport = free_port(), free_port()
        self.addr["coordinator"] = "127.0.0.1:%d" % port
        self.addr["health"] = "127.0.0.1:%d" % hport
        self.start("coordinator", [os.path.join(BUILD, "tandem-coordinator"), "--listen", self.addr["coordinator"],
                                   "--health-listen", self.addr["health"], "--etcd", self.etcd, "--cluster", "t",
                                   "--step-timeout-ms", "1500", "--keepalive-ms", "1000"] + list(extra))

    def stop(self, name, sig=signal.SIGTERM, wait=15):
        p = self.procs.pop(name, None)
        if not p:
            return None
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(wait)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return p.returncode

    def stop_all(self):
        codes = {}
        for name in ["coordinator"] + [n for n in list(self.procs) if n not in ("coordinator", "etcd")] + ["etcd"]:
            if name in self.procs:
                codes[name] = self.stop(name)
        return codes


def wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            if pred():
                return
        except Exception as e:  # the thing is not up yet
            last = e
        time.sleep(0.1)
    raise AssertionError("timed out waiting for %s (%s)" % (what, last))


class ServiceTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="tandem-service-")
        cls.model = os.path.join(cls.tmp, "tiny.gguf")
        subprocess.run([os.path.join(BUILD, "td-mktiny"), cls.model, "--ctx", "2048"], check=True, capture_output=True)
        cls.c = Cluster(cls.tmp, cls.model)
        try:
            cls.c.start_etcd()
            cls.c.start_worker("verifier-a", "verifier")
            cls.c.start_worker("verifier-b", "verifier")
            cls.c.start_worker("drafter-a", "drafter")
            cls.c.start_coordinator()
            cls.ch = grpc.insecure_channel(cls.c.addr["coordinator"])
            cls.api = pbg.InferenceStub(cls.ch)
            cls.health = hpbg.HealthStub(cls.ch)
            wait_for(lambda: cls.health.Check(hpb.HealthCheckRequest(service="tandem.v1.Inference"), timeout=2).status
                     == hpb.HealthCheckResponse.SERVING, 60, "coordinator readiness")
            wait_for(lambda: len(cls.registered()) == 3, 30, "three registrations")
        except Exception:
            cls.c.stop_all()
            raise

    @classmethod
    def tearDownClass(cls):
        codes = cls.c.stop_all()
        cls.ch.close()
        # tandem processes exit 0 on SIGTERM; etcd dies of it (-15)
        bad = {k: v for k, v in codes.items() if v not in (0, -9, None) and not (k == "etcd" and v == -15)}
        if bad:
            for name in bad:
                print("---- %s.log (exit %s) ----\n%s" % (name, bad[name], open(cls.c.log(name)).read()[-3000:]))
        if os.environ.get("TD_KEEP_LOGS"):
            print("logs kept in", cls.tmp)
        else:
            shutil.rmtree(cls.tmp, ignore_errors=True)
        assert not bad, "processes did not exit 0 on SIGTERM: %s" % bad

    @classmethod
    def registered(cls):
        r = cls.c.etcdctl("get", "--prefix", "/tandem/t/workers/", "--print-value-only")
        return [json.loads(l) for l in r.stdout.splitlines() if l.strip()]

    # ---- helpers ----
    def cli(self, *args, check=True):
        r = subprocess.run([os.path.join(BUILD, "tandem")] + list(args), capture_output=True)
        if check and r.returncode != 0:
            self.fail("tandem %s: exit %d: %s" % (" ".join(args), r.returncode, r.stderr.decode(errors="replace")))
        return r

    def generate(self, timeout=60, **kw):
        text, ids, last, first = [], [], None, None
        for m in self.api.Generate(pb.GenerateRequest(**kw), timeout=timeout):
            first = first or m
            text.append(m.text)
            ids.extend(t.id for t in m.tokens)
            last = m
        self.assertTrue(last.done)
        return "".join(text).encode(), ids, last, first

    @staticmethod
    def wire(b):
        """Local output as the wire carries it: ill-formed UTF-8 replaced."""
        return b.decode("utf-8", errors="replace").encode()

    def worker_stats(self, name):
        with grpc.insecure_channel(self.c.addr[name]) as ch:
            return wpbg.WorkerStub(ch).Stats(wpb.StatsRequest(), timeout=5)

    def sequences(self):
        return sum(self.worker_stats(n).sequences for n in ("verifier-a", "verifier-b") if n in self.c.procs)

    # ---- tests (run in name order) ----
    def test_01_health(self):
        for addr in (self.c.addr["coordinator"], self.c.addr["health"]):
            with grpc.insecure_channel(addr) as ch:
                h = hpbg.HealthStub(ch)
                self.assertEqual(h.Check(hpb.HealthCheckRequest(), timeout=5).status, hpb.HealthCheckResponse.SERVING)
                self.assertEqual(h.Check(hpb.HealthCheckRequest(service="tandem.v1.Inference"), timeout=5).status,
                                 hpb.HealthCheckResponse.SERVING)
        with grpc.insecure_channel(self.c.addr["health"]) as ch:  # the health port serves nothing else
            with self.assertRaises(grpc.RpcError) as e:
                pbg.InferenceStub(ch).ListModels(pb.ListModelsRequest(), timeout=5)
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
        r = self.cli("health", "--server", self.c.addr["coordinator"])
        self.assertEqual(r.stdout.strip(), b"SERVING")

    def test_02_models_and_tokenize(self):
        models = self.api.ListModels(pb.ListModelsRequest(), timeout=5).models
        self.assertEqual(len(models), 1)
        self.assertEqual(models[0].verifiers, 2)
        self.assertEqual(models[0].drafters, 1)
        text = "hello world, tandem here"
        got = self.api.Tokenize(pb.TokenizeRequest(text=text, add_bos=False), timeout=5).ids
        want = self.cli("tokenize", "--model", self.model, text).stdout.split()
        self.assertEqual([str(i).encode() for i in got], want)

    def test_03_generate_identical_to_local(self):
        prompt = "the quick brown fox jumps over the lazy dog and the quick brown fox"
        local = self.cli("generate", "--model", self.model, "--prompt", prompt, "--max-tokens", "40").stdout
        for drafters in ("none", "auto", "model", "layerskip", "lookup,model"):
            text, ids, last, first = self.generate(prompt=prompt, max_tokens=40,
                                                   sampling=pb.SamplingParams(seed=0),
                                                   speculation=pb.SpeculationParams(drafters=drafters))
            self.assertEqual(text, self.wire(local), "drafters " + drafters)
            self.assertEqual(len(ids), last.usage.completion_tokens)
            self.assertTrue(first.request_id)
        # seeded sampling, with and without speculation
        local = self.cli("generate", "--model", self.model, "--prompt", prompt, "--max-tokens", "40",
                         "--temperature", "0.9", "--top-p", "0.95", "--seed", "1234").stdout
        for drafters in ("none", "auto,model"):
            text, ids, last, first = self.generate(prompt=prompt, max_tokens=40,
                                                   sampling=pb.SamplingParams(temperature=0.9, top_p=0.95, seed=1234),
                                                   speculation=pb.SpeculationParams(drafters=drafters))
            self.assertEqual(text, self.wire(local), "sampled, drafters " + drafters)
            self.assertEqual(first.seed, 1234)
        # the CLI's --server path prints the same bytes
        r = self.cli("generate", "--server", self.c.addr["coordinator"], "--prompt", prompt, "--max-tokens", "40",
                     "--temperature", "0.9", "--top-p", "0.95", "--seed", "1234", "--draft", "auto")
        self.assertEqual(r.stdout, self.wire(local))
        # an unset seed is fixed by the coordinator and returned; resuming
        # with it and the tokens already received continues identically
        # (ignore_eos: a random seed must not end the stream before the resume point)
        text, ids, last, first = self.generate(prompt=prompt, max_tokens=30, ignore_eos=True,
                                               sampling=pb.SamplingParams(temperature=1.0))
        self.assertNotEqual(first.seed, 0)
        self.assertEqual(len(ids), 30)
        _, ids2, last2, _ = self.generate(prompt=prompt, max_tokens=30, resume_ids=ids[:12], ignore_eos=True,
                                          sampling=pb.SamplingParams(temperature=1.0, seed=first.seed))
        self.assertEqual(ids[12:], ids2)
        # logprobs: one per token, the sampled token's within the alternatives when it is the best
        _, ids, last, _ = self.generate(prompt=prompt, max_tokens=8, logprobs=3)

    def test_04_score_equals_perplexity(self):
        text = "the cat sat on the mat and looked at the dog who sat on the log near the frog"
        path = os.path.join(self.tmp, "ppl.txt")
        with open(path, "w") as f:
            f.write(text)
        lines = self.cli("perplexity", "--model", self.model, "--file", path, "--per-token").stdout.decode().splitlines()
        want = [l.split("\t") for l in lines if "\t" in l]
        # perplexity tokenizes as the model says (BOS or not); so does this
        ids = list(self.api.Tokenize(pb.TokenizeRequest(text=text, add_bos=False), timeout=5).ids)
        if len(ids) == len(want):
            ids = list(self.api.Tokenize(pb.TokenizeRequest(text=text, add_bos=True), timeout=5).ids)
        self.assertEqual([int(w[0]) for w in want], ids[1:])
        item = pb.ScoreItem(id="x", prompt_ids=ids[:1], continuation_ids=ids[1:])
        r = self.api.Score(pb.ScoreRequest(items=[item, item, item], top_k=2), timeout=60)
        self.assertEqual(len(r.results), 3)
        for res in r.results:
            self.assertEqual(res.error, "")
            self.assertEqual(["%.9g" % t.logprob for t in res.tokens], [w[1] for w in want])
            self.assertEqual(res.token_count, len(ids) - 1)
            for t in res.tokens:  # greedy means "is the best alternative"
                self.assertEqual(t.greedy, t.top[0].id == t.id)
        # text items, with per-item errors beside good ones
        items = [pb.ScoreItem(id="ok", prompt="the cat", continuation=" sat"),
                 pb.ScoreItem(id="empty", prompt="the cat", continuation=""),
                 pb.ScoreItem(id="long", prompt="the cat " * 1500, continuation=" sat")]
        r = self.api.Score(pb.ScoreRequest(items=items, add_bos=True), timeout=60)
        self.assertEqual([x.id for x in r.results], ["ok", "empty", "long"])
        self.assertEqual(r.results[0].error, "")
        self.assertIn("continuation", r.results[1].error)
        self.assertIn("context", r.results[2].error)

    def expect_error(self, code, words, **kw):
        with self.assertRaises(grpc.RpcError) as e:
            list(self.api.Generate(pb.GenerateRequest(**kw), timeout=30))
        self.assertEqual(e.exception.code(), code, e.exception.details())
        for w in words:
            self.assertIn(w, e.exception.details())

    def test_05_bad_input(self):
        INV = grpc.StatusCode.INVALID_ARGUMENT
        self.expect_error(INV, ["prompt"], prompt="")
        self.expect_error(INV, ["max_tokens"], prompt="hi", max_tokens=-3)
        self.expect_error(INV, ["max_tokens"], prompt="hi", max_tokens=1 << 30)
        self.expect_error(INV, ["temperature"], prompt="hi", sampling=pb.SamplingParams(temperature=float("nan")))
        self.expect_error(INV, ["top_p"], prompt="hi", sampling=pb.SamplingParams(top_p=1.5))
        self.expect_error(INV, ["drafters"], prompt="hi", speculation=pb.SpeculationParams(drafters="telepathy"))
        self.expect_error(INV, ["context"], prompt="the cat " * 1500)
        self.expect_error(INV, ["logprobs"], prompt="hi", logprobs=99)
        self.expect_error(grpc.StatusCode.NOT_FOUND, ["model"], prompt="hi", model="no-such-model")
        # bytes the Python client would refuse to send: raw protobuf
        raw = self.ch.unary_stream("/tandem.v1.Inference/Generate", request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        bad_utf8 = b"\x12\x03\xff\xfe\x41"  # field 2 (prompt), 3 bytes that are no UTF-8
        garbage = b"\xff\xff\xff\xff"
        for body in (bad_utf8, garbage):
            with self.assertRaises(grpc.RpcError) as e:
                list(raw(body, timeout=10))
            self.assertEqual(e.exception.code(), INV, e.exception.details())
        with self.assertRaises(grpc.RpcError) as e:  # bigger than the server takes
            list(self.api.Generate(pb.GenerateRequest(prompt="x" * (20 << 20)), timeout=30))
        self.assertEqual(e.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertEqual(self.sequences(), 0)

    def test_06_cancel_and_deadline_free_the_sequence(self):
        req = pb.GenerateRequest(prompt="once upon a time", max_tokens=2000, ignore_eos=True,
                                 speculation=pb.SpeculationParams(drafters="none"))
        call = self.api.Generate(req, timeout=60)
        next(call)
        next(call)
        self.assertEqual(self.sequences(), 1)
        call.cancel()
        wait_for(lambda: self.sequences() == 0, 10, "the sequence to be released after cancel")
        with self.assertRaises(grpc.RpcError) as e:
            list(self.api.Generate(req, timeout=0.5))
        self.assertEqual(e.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        wait_for(lambda: self.sequences() == 0, 10, "the sequence to be released after the deadline")

    def served_by(self, first):
        """The verifier that served a finished Generate (the coordinator's log)."""
        m = re.search(r"req=%s Generate done: .* verifier (\S+)" % re.escape(first.request_id),
                      slurp(self.c.log("coordinator"), "r"))
        return m.group(1) if m else None

    def test_06b_a_continuation_goes_where_its_prefix_is_cached(self):
        # conversations A and C each have a first turn; C's continuation then
        # keeps A's verifier busy, and A's second turn (A's first + its
        # answer + more) still goes there -- least-loaded would pick the
        # idle one -- and reuses the cached first turn, which C's requests
        # on the same verifier did not take
        nd = pb.SpeculationParams(drafters="none")
        words = " ".join("word%d" % i for i in range(60))
        ids_a = list(self.api.Tokenize(pb.TokenizeRequest(text="conversation A: " + words), timeout=10).ids)
        self.assertGreater(len(ids_a), 70)
        _, out_a, _, first_a = self.generate(prompt_ids=ids_a, max_tokens=16, ignore_eos=True, speculation=nd)
        where = self.served_by(first_a)
        self.assertIsNotNone(where)
        # conversation C shares A's first 64 tokens (a common system prompt):
        # affinity sends it to A's verifier too, where it takes a fresh slot
        # rather than A's long warm one (it would keep under half of it)
        tail_c = list(self.api.Tokenize(pb.TokenizeRequest(text="conversation C, unrelated: " + words[::-1]),
                                        timeout=10).ids)
        ids_c = ids_a[:64] + tail_c
        _, _, _, first_c = self.generate(prompt_ids=ids_c, max_tokens=4, ignore_eos=True, speculation=nd)
        self.assertEqual(self.served_by(first_c), where)
        bg = self.api.Generate(pb.GenerateRequest(prompt_ids=ids_c + [5], max_tokens=400, ignore_eos=True,
                                                  speculation=nd), timeout=120)
        next(bg)
        next(bg)
        self.assertEqual([n for n in ("verifier-a", "verifier-b") if self.worker_stats(n).sequences > 0], [where])
        before = slurp(self.c.log(where), "r").count("reused from the cache")
        _, _, last2, first2 = self.generate(prompt_ids=ids_a + out_a + [7, 8, 9], max_tokens=4, speculation=nd)
        bg.cancel()
        self.assertEqual(self.served_by(first2), where)
        opened = re.findall(r"\((\d+) reused from the cache\)", slurp(self.c.log(where), "r"))[before:]
        # the first turn's prompt and most of its answer (the last commits
        # ride on a next Verify that never came)
        self.assertEqual(last2.usage.cached_tokens, int(opened[-1]) if opened else -1)
        self.assertTrue(opened and int(opened[-1]) > len(ids_a),
                        [l[60:] for l in slurp(self.c.log(where), "r").splitlines() if "opened" in l or "releas" in l])
        wait_for(lambda: self.sequences() == 0, 30, "the sequences to be released")

    def test_07_score_cli_resumes_exactly_once(self):
        src = os.path.join(self.tmp, "items.jsonl")
        out = os.path.join(self.tmp, "scores.jsonl")
        n = 240
        with open(src, "wb") as f:
            for i in range(n):
                f.write(json.dumps({"custom_id": "item-%d" % i, "prompt": "the cat number %d" % i,
                                    "continuation": " sat on the mat " * (1 + i % 3)}).encode() + b"\n")
            f.write(b'{"custom_id": "bad-utf8", "prompt": "a\xff\xfe", "continuation": " b"}\n')
            f.write(b"this line is not json\n")
        argv = [os.path.join(BUILD, "tandem"), "score", "--server", self.c.addr["coordinator"], "--in", src,
                "--out", out, "--batch", "4", "--concurrency", "2"]
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        def lines(path):
            with open(path, "rb") as f:
                return f.read().splitlines()
        wait_for(lambda: os.path.exists(out) and len(lines(out)) >= 40, 60, "some scores")
        p.kill()  # SIGKILL: no chance to tidy up
        p.wait()
        with open(out, "ab") as f:  # as if the crash had torn a line
            f.write(b'{"custom_id": "item-9999", "logprob_su')
        r = subprocess.run(argv, capture_output=True)
        self.assertIn(r.returncode, (0, 1), r.stderr)  # 1: the two bad items are errors
        self.assertIn(b"torn", r.stderr)
        ids = [json.loads(l)["custom_id"] for l in lines(out)]
        self.assertEqual(sorted(ids), sorted("item-%d" % i for i in range(n)))
        errs = [json.loads(l)["custom_id"] for l in lines(out + ".errors.jsonl")]
        self.assertEqual(sorted(errs), ["bad-utf8", "line-%d" % (n + 2)])
        # a third run has nothing left to do
        r = subprocess.run(argv, capture_output=True)
        self.assertIn(b"0 scored", r.stderr)
        self.assertEqual(len(lines(out)), n)

    def test_08_verifier_killed_mid_stream(self):
        req = dict(prompt="in a land far away there lived", max_tokens=160, ignore_eos=True,
                   sampling=pb.SamplingParams(temperature=0.8, seed=99), speculation=pb.SpeculationParams(drafters="auto"))
        want, want_ids, _, _ = self.generate(**req)
        call = self.api.Generate(pb.GenerateRequest(**req), timeout=120)
        got_ids, text = [], []
        m = next(call)
        text.append(m.text)
        got_ids.extend(t.id for t in m.tokens)
        busy = [n for n in ("verifier-a", "verifier-b") if self.worker_stats(n).sequences > 0]
        self.assertEqual(len(busy), 1)
        self.c.stop(busy[0], signal.SIGKILL)
        for m in call:
            text.append(m.text)
            got_ids.extend(t.id for t in m.tokens)
        self.assertTrue(m.done)
        self.assertEqual(got_ids, want_ids)
        self.assertEqual("".join(text).encode(), want)
        # a replacement for the later tests
        self.c.start_worker(busy[0], "verifier")
        wait_for(lambda: self.api.ListModels(pb.ListModelsRequest(), timeout=5).models[0].verifiers == 2, 30,
                 "the replacement verifier")

    def test_08b_verifier_hung_mid_stream(self):
        # SIGSTOP: the process and its lease live on, it just stops answering;
        # the per-step deadline notices and the stream moves
        req = dict(prompt="in a land far away there lived", max_tokens=160, ignore_eos=True,
                   sampling=pb.SamplingParams(temperature=0.8, seed=99), speculation=pb.SpeculationParams(drafters="auto"))
        want, want_ids, _, _ = self.generate(**req)
        call = self.api.Generate(pb.GenerateRequest(**req), timeout=120)
        got_ids = []
        m = next(call)
        got_ids.extend(t.id for t in m.tokens)
        busy = [n for n in ("verifier-a", "verifier-b") if self.worker_stats(n).sequences > 0]
        self.assertEqual(len(busy), 1)
        self.c.procs[busy[0]].send_signal(signal.SIGSTOP)
        try:
            for m in call:
                got_ids.extend(t.id for t in m.tokens)
        finally:
            self.c.procs[busy[0]].send_signal(signal.SIGCONT)
        self.assertTrue(m.done)
        self.assertEqual(got_ids, want_ids)
        # the woken worker lost nothing it cannot reclaim, and still serves
        wait_for(lambda: self.worker_stats(busy[0]).sequences == 0, 30, "the hung worker's sequence to be released")

    def test_09_etcd_outage(self):
        self.c.stop("etcd", signal.SIGKILL)
        # requests keep flowing while etcd is away (the coordinator keeps its table)
        text, _, _, _ = self.generate(prompt="hello", max_tokens=8)
        with grpc.insecure_channel(self.c.addr["health"]) as ch:  # liveness ignores etcd
            self.assertEqual(hpbg.HealthStub(ch).Check(hpb.HealthCheckRequest(), timeout=5).status,
                             hpb.HealthCheckResponse.SERVING)
        time.sleep(10)  # longer than the lease TTL: the leases expire
        self.c.start_etcd()
        wait_for(lambda: len(self.registered()) == 3, 40, "registrations to come back")
        wait_for(lambda: self.health.Check(hpb.HealthCheckRequest(service="tandem.v1.Inference"), timeout=2).status
                 == hpb.HealthCheckResponse.SERVING, 40, "readiness after etcd returned")
        # a registration restored from etcd's data may still expire once
        # before its worker puts it again: a client retries UNAVAILABLE
        got = []

        def served():
            try:
                got.append(self.generate(prompt="hello", max_tokens=8)[0])
                return True
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                return False
        wait_for(served, 40, "a request served after etcd returned")
        self.assertEqual(text, got[0])
        for name in ("verifier-a", "verifier-b", "drafter-a"):
            self.assertIsNone(self.c.procs[name].poll(), name + " exited while etcd was away")

    def test_10_last_verifier_gone(self):
        self.c.stop("verifier-a", signal.SIGKILL)
        self.c.stop("verifier-b", signal.SIGKILL)
        t0 = time.time()
        with self.assertRaises(grpc.RpcError) as e:
            list(self.api.Generate(pb.GenerateRequest(prompt="hello", max_tokens=8), timeout=60))
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE, e.exception.details())
        self.assertLess(time.time() - t0, 30)  # fails within seconds: never waits for the 60 s deadline


def slurp(path, mode="rb"):
    with open(path, mode, errors=None if "b" in mode else "replace") as f:
        return f.read()


def make_pki(d):
    """A throwaway CA, a certificate for 127.0.0.1/localhost (coordinator
    and worker share it) and a client certificate (the coordinator's, to the
    worker), all signed by the CA."""
    sh = ("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=tandem-test-ca -keyout ca.key -out ca.pem && "
          "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > server.ext && "
          "openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr && "
          "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile server.ext "
          "-out server.pem && "
          "openssl req -newkey rsa:2048 -nodes -subj /CN=tandem-coordinator -keyout client.key -out client.csr && "
          "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -out client.pem")
    subprocess.run(["sh", "-c", sh], cwd=d, check=True, capture_output=True)
    return {k: os.path.join(d, k) for k in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


class SecureServiceTest(unittest.TestCase):
    """TLS + bearer tokens on the coordinator's public port, mutual TLS to
    the verifier, plaintext health-only port."""

    TOKEN = "tok-7f3c9a1e5b2d4608a9e1c3b5d7f90a2b"
    PROMPT = "the quick brown fox jumps over the lazy dog and the quick brown fox"

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="tandem-secure-")
        cls.model = os.path.join(cls.tmp, "tiny.gguf")
        subprocess.run([os.path.join(BUILD, "td-mktiny"), cls.model, "--ctx", "2048"], check=True, capture_output=True)
        pki_dir = os.path.join(cls.tmp, "pki")
        os.mkdir(pki_dir)
        cls.pki = make_pki(pki_dir)
        cls.tokens_file = os.path.join(cls.tmp, "tokens")
        with open(cls.tokens_file, "w") as f:
            f.write("# tokens of this cluster\nother-token-not-used\n%s\n" % cls.TOKEN)
        cls.client_token = os.path.join(cls.tmp, "client-token")
        with open(cls.client_token, "w") as f:
            f.write(cls.TOKEN + "\n")
        cls.ca = slurp(cls.pki["ca.pem"])
        cls.c = Cluster(cls.tmp, cls.model)
        try:
            cls.c.start_etcd()
            cls.c.start_worker("verifier", "verifier", ["--tls-cert", cls.pki["server.pem"], "--tls-key",
                                                        cls.pki["server.key"], "--tls-client-ca", cls.pki["ca.pem"]])
            cls.c.start_coordinator(["--tls-cert", cls.pki["server.pem"], "--tls-key", cls.pki["server.key"],
                                     "--auth-tokens", cls.tokens_file, "--worker-tls-ca", cls.pki["ca.pem"],
                                     "--worker-tls-cert", cls.pki["client.pem"], "--worker-tls-key",
                                     cls.pki["client.key"]])
            # reconnect soon: the channel exists before the coordinator listens
            cls.ch = grpc.secure_channel(cls.c.addr["coordinator"], grpc.ssl_channel_credentials(root_certificates=cls.ca),
                                         options=[("grpc.initial_reconnect_backoff_ms", 200),
                                                  ("grpc.max_reconnect_backoff_ms", 1000)])
            cls.api = pbg.InferenceStub(cls.ch)
            health = hpbg.HealthStub(cls.ch)  # health needs no token, also on the TLS port
            wait_for(lambda: health.Check(hpb.HealthCheckRequest(service="tandem.v1.Inference"), timeout=2).status
                     == hpb.HealthCheckResponse.SERVING, 60, "coordinator readiness over TLS")
        except Exception:
            cls.c.stop_all()
            raise

    @classmethod
    def tearDownClass(cls):
        codes = cls.c.stop_all()
        cls.ch.close()
        bad = {k: v for k, v in codes.items() if v not in (0, None) and not (k == "etcd" and v == -15)}
        if bad:
            for name in bad:
                print("---- %s.log (exit %s) ----\n%s" % (name, bad[name], open(cls.c.log(name)).read()[-3000:]))
        # every process log, read after the processes ended: no secret in any
        leaks = []
        key_lines = [l for l in (slurp(cls.pki["server.key"], "r") + slurp(cls.pki["client.key"], "r")).splitlines()
                     if l and not l.startswith("-----")]
        for name in os.listdir(cls.tmp):
            if name.endswith(".log"):
                text = slurp(os.path.join(cls.tmp, name), "r")
                if cls.TOKEN in text:
                    leaks.append(name + ": the token")
                if "PRIVATE KEY" in text or any(l in text for l in key_lines):
                    leaks.append(name + ": private key text")
        if os.environ.get("TD_KEEP_LOGS"):
            print("logs kept in", cls.tmp)
        else:
            shutil.rmtree(cls.tmp, ignore_errors=True)
        assert not bad, "processes did not exit 0 on SIGTERM: %s" % bad
        assert not leaks, "secrets in logs: %s" % leaks

    def cli(self, *args, env=None):
        return subprocess.run([os.path.join(BUILD, "tandem")] + list(args), capture_output=True,
                              env=dict(os.environ, **(env or {})))

    def local(self):
        r = self.cli("generate", "--model", self.model, "--prompt", self.PROMPT, "--max-tokens", "32")
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def generate(self, metadata):
        text = b""
        for m in self.api.Generate(pb.GenerateRequest(prompt=self.PROMPT, max_tokens=32,
                                                      sampling=pb.SamplingParams(seed=0)),
                                   timeout=60, metadata=metadata):
            text += m.text.encode()
        return text

    def test_01_generate_over_tls_with_token(self):
        text = self.generate([("authorization", "Bearer " + self.TOKEN)])
        self.assertEqual(text, self.local().decode("utf-8", errors="replace").encode())

    def test_02_no_or_wrong_token(self):
        for md in (None, [("authorization", "Bearer wrong")], [("authorization", self.TOKEN)]):
            with self.assertRaises(grpc.RpcError) as e:
                self.generate(md)
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED, md)
            self.assertEqual(e.exception.details(), "missing or invalid bearer token")
        with self.assertRaises(grpc.RpcError) as e:
            self.api.ListModels(pb.ListModelsRequest(), timeout=5)
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)

    def test_03_plaintext_refused_health_port_open(self):
        with grpc.insecure_channel(self.c.addr["coordinator"]) as ch:  # plaintext to the TLS port
            with self.assertRaises(grpc.RpcError) as e:
                hpbg.HealthStub(ch).Check(hpb.HealthCheckRequest(), timeout=5)
            self.assertIn(e.exception.code(), (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED))
        with grpc.insecure_channel(self.c.addr["health"]) as ch:
            self.assertEqual(hpbg.HealthStub(ch).Check(hpb.HealthCheckRequest(service="tandem.v1.Inference"),
                                                       timeout=5).status, hpb.HealthCheckResponse.SERVING)
        r = self.cli("health", "--server", self.c.addr["health"])
        self.assertEqual(r.stdout.strip(), b"SERVING")
        r = self.cli("health", "--server", self.c.addr["coordinator"], "--tls-ca", self.pki["ca.pem"])
        self.assertEqual(r.stdout.strip(), b"SERVING", r.stderr)

    def test_04_worker_wants_client_certificate(self):
        addr = self.c.addr["verifier"]
        for creds in (None, grpc.ssl_channel_credentials(root_certificates=self.ca)):
            ch = grpc.secure_channel(addr, creds) if creds else grpc.insecure_channel(addr)
            with ch:
                with self.assertRaises(grpc.RpcError):
                    wpbg.WorkerStub(ch).Stats(wpb.StatsRequest(), timeout=5)
        creds = grpc.ssl_channel_credentials(root_certificates=self.ca,
                                             private_key=slurp(self.pki["client.key"]),
                                             certificate_chain=slurp(self.pki["client.pem"]))
        with grpc.secure_channel(addr, creds) as ch:
            wpbg.WorkerStub(ch).Stats(wpb.StatsRequest(), timeout=5)

    def test_05_cli_generate_with_tls_and_token(self):
        base = ["generate", "--server", self.c.addr["coordinator"], "--prompt", self.PROMPT, "--max-tokens", "32",
                "--tls-ca", self.pki["ca.pem"]]
        local = self.local()
        r = self.cli(*(base + ["--token-file", self.client_token]))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, local.decode("utf-8", errors="replace").encode())
        r = self.cli(*base, env={"TANDEM_TOKEN": self.TOKEN})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, local.decode("utf-8", errors="replace").encode())
        r = self.cli(*base)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b"UNAUTHENTICATED", r.stderr)
        r = self.cli(*(base + ["--token-file", os.path.join(self.tmp, "no-such-file")]))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b"no-such-file", r.stderr)
        self.assertNotIn(self.TOKEN.encode(), r.stdout + r.stderr)


class WorkerDeviceFlagsTest(unittest.TestCase):
    """tandem-worker --device: refusals name the flag and exit 2 before
    anything loads; on a build or machine without CUDA the worker says so
    and exits 1 (no cluster needed)."""

    def worker(self, *args):
        return subprocess.run([os.path.join(BUILD, "tandem-worker"), "--listen", "127.0.0.1:0"] + list(args),
                              capture_output=True, timeout=60)

    def test_help_names_device(self):
        r = self.worker("--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn(b"--device DEV", r.stdout)

    def test_refusals(self):
        model = os.path.join(tempfile.gettempdir(), "no-model-needed.gguf")
        for args, text in [(["--role", "verifier", "--model", model, "--device", "gpu"], b"unknown device"),
                           (["--role", "verifier", "--model", model, "--device", "cuda:x"], b"--device"),
                           (["--role", "drafter", "--model", model, "--device", "cuda"], b"for verifiers"),
                           (["--role", "verifier", "--model", model, "--tp-comm", "nccl"], b"needs --device cuda"),
                           (["--role", "verifier", "--model", model, "--tp-comm", "gloo"], b"mpi or nccl"),
                           # a group meeting through etcd: what it needs, each named
                           (["--role", "verifier", "--model", model, "--tp", "2", "--tp-rank", "1"],
                            b"needs --tp-comm nccl"),
                           (["--role", "verifier", "--model", model, "--tp", "2", "--tp-rank", "1", "--tp-comm",
                             "nccl", "--device", "cuda"], b"needs --etcd"),
                           (["--role", "verifier", "--model", model, "--tp", "2", "--tp-rank", "1", "--tp-comm",
                             "nccl", "--device", "cuda", "--etcd", "127.0.0.1:1"], b"needs --tp-group"),
                           (["--role", "verifier", "--model", model, "--tp", "2", "--tp-rank", "2", "--tp-comm",
                             "nccl", "--device", "cuda", "--etcd", "127.0.0.1:1", "--tp-group", "g"],
                            b"not a rank of --tp 2"),
                           (["--role", "verifier", "--model", model, "--tp-rank", "0"], b"needs --tp N"),
                           (["--role", "verifier", "--model", model, "--tp-group", "g"], b"go with --tp-rank"),
                           (["--role", "verifier", "--model", model, "--tp", "2"], b"give each its --tp-rank"),
                           (["--role", "verifier", "--model", model, "--tp-join-timeout", "0"], b"1..86400")]:
            r = self.worker(*args)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertIn(text, r.stderr, args)
        # the GPU computes every order the worker offers (tp-invariant too):
        # the flags pass, and the missing model is what stops it
        r = self.worker("--role", "verifier", "--model", model, "--device", "cuda", "--numerics", "tp-invariant")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(b"cannot load", r.stderr)

    def test_no_gpu_here_is_said(self):
        model = DEFAULT_MODEL or os.path.join(os.path.expanduser("~"), ".cache", "tandem", "models",
                                              "SmolLM2-135M-Instruct.Q4_1.gguf")
        if not os.path.exists(model):
            self.skipTest("no model file")
        p = subprocess.Popen([os.path.join(BUILD, "tandem-worker"), "--listen", "127.0.0.1:0", "--role", "verifier",
                              "--model", model, "--device", "cuda"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # it serves: a GPU is here (the lent machine)
            p.send_signal(signal.SIGTERM)
            p.communicate(timeout=30)
            self.skipTest("a GPU is here: the worker serves")
        self.assertEqual(p.returncode, 1, err)
        self.assertRegex(err.decode(errors="replace"), r"cannot load .*(CUDA|cuda|GPU|device)")


class TensorParallelServiceTest(unittest.TestCase):
    """A TP=2 verifier group (mpirun -np 2 tandem-worker --tp 2, the
    tp-invariant order) in the service: rank 0 registers with tp 2, and a
    generation through the coordinator (lookup drafts verified by the
    group) equals the unsplit model's local one; then kill -9 of rank 1
    takes the group out of etcd within the lease TTL."""

    def test_tp2_group(self):
        mpirun = shutil.which("mpirun")
        if not mpirun:
            self.skipTest("mpirun not installed")
        tmp = tempfile.mkdtemp(prefix="tandem-service-tp-")
        model = os.path.join(tmp, "tiny.gguf")
        # Q4_1 throughout: the mixed tiny model's K-quant blocks are wider
        # than a rank's attention inputs, a split tandem refuses
        subprocess.run([os.path.join(BUILD, "td-mktiny"), model, "--ctx", "2048", "--type", "Q4_1"], check=True,
                       capture_output=True)
        c = Cluster(tmp, model)
        try:
            c.start_etcd()
            port = free_port()
            c.addr["tp"] = "127.0.0.1:%d" % port
            c.start("tp", [mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "2",
                           os.path.join(BUILD, "tandem-worker"), "--role", "verifier", "--tp", "2",
                           "--numerics", "tp-invariant", "--model", model, "--listen", c.addr["tp"],
                           "--etcd", c.etcd, "--cluster", "t", "--id", "tp", "--lease-ttl", TTL,
                           "--threads", "1", "--max-seqs", "8", "--idle-timeout", "5"])
            key = "/tandem/t/workers/tp"

            def reg():
                r = c.etcdctl("get", key, "--print-value-only")
                return json.loads(r.stdout) if r.stdout.strip() else None
            wait_for(lambda: reg() is not None, 60, "the group's registration")
            self.assertEqual(reg()["tp"], 2)
            self.assertIn("tp=2", reg()["fingerprint"])
            c.start_coordinator()
            with grpc.insecure_channel(c.addr["coordinator"]) as ch:
                health = hpbg.HealthStub(ch)
                wait_for(lambda: health.Check(hpb.HealthCheckRequest(service="tandem.v1.Inference"), timeout=2).status
                         == hpb.HealthCheckResponse.SERVING, 60, "readiness")
                prompt = "the cat sat on the mat and the cat sat on the"
                local = subprocess.run([os.path.join(BUILD, "tandem"), "generate", "--model", model, "--prompt", prompt,
                                        "--max-tokens", "40", "--numerics", "tp-invariant", "--threads", "1"],
                                       capture_output=True, check=True).stdout
                text = b""
                for m in pbg.InferenceStub(ch).Generate(pb.GenerateRequest(
                        prompt=prompt, max_tokens=40, sampling=pb.SamplingParams(seed=0),
                        speculation=pb.SpeculationParams(drafters="lookup")), timeout=120):
                    text += m.text.encode()
                self.assertEqual(text, local.decode("utf-8", errors="replace").encode())
            # rank 1: the mpirun child whose environment says so
            rank1 = None
            for pid in subprocess.run(["pgrep", "-P", str(c.procs["tp"].pid)], capture_output=True,
                                      text=True).stdout.split():
                try:
                    with open("/proc/%s/environ" % pid, "rb") as f:
                        env = f.read().split(b"\0")
                except OSError:
                    continue
                if b"OMPI_COMM_WORLD_RANK=1" in env:
                    rank1 = int(pid)
            self.assertIsNotNone(rank1, "rank 1 not found among mpirun's children")
            t0 = time.time()
            os.kill(rank1, signal.SIGKILL)
            wait_for(lambda: reg() is None, float(TTL) + 3, "the group to leave etcd")
            gone = time.time() - t0
            print("# group left etcd %.2f s after kill -9 of rank 1 (lease TTL %s s)" % (gone, TTL))
            self.assertLessEqual(gone, float(TTL) + 1.0)  # + etcd's expiry granularity
        finally:
            c.stop_all()
            if os.environ.get("TD_KEEP_LOGS"):
                print("logs kept in", tmp)
            else:
                shutil.rmtree(tmp, ignore_errors=True)


class GpuGroupThroughEtcdTest(unittest.TestCase):
    """A GPU verifier group that forms without a launcher, as a
    StatefulSet's pods do: each rank is told its --tp-rank, rank 0 publishes
    the group's NCCL id in etcd, rank 1 reads it there (tandem-worker-cuemu:
    the worker on the CUDA emulator, whose NCCL carries data over MPI, so
    mpirun starts the two processes, and the emulation refuses a rank that
    holds another id than rank 0's). The group registers with tp 2, the id's
    key is gone once it formed, and a generation through the coordinator
    equals two CPU ranks' in the reference order. Then a rank told another
    generation never finds an id and says so, and a rank 0 whose peer never
    joins ends after its join timeout (NCCL's join cannot be cancelled)."""

    def setUp(self):
        self.mpirun = shutil.which("mpirun")
        self.worker = os.path.join(BUILD, "tandem-worker-cuemu")
        if not self.mpirun or not os.path.exists(self.worker):
            self.skipTest("needs mpirun and the emulated worker (build/tandem-worker-cuemu)")
        self.tmp = tempfile.mkdtemp(prefix="tandem-service-gpu-group-")
        self.model = os.path.join(self.tmp, "tiny.gguf")
        subprocess.run([os.path.join(BUILD, "td-mktiny"), self.model, "--ctx", "2048", "--type", "Q4_1"], check=True,
                       capture_output=True)
        self.c = Cluster(self.tmp, self.model)
        self.c.start_etcd()

    def tearDown(self):
        self.c.stop_all()
        for name in ("gpu-tp", "gpu-stale", "gpu-alone"):  # the sanitizer build's reports, had a rank any
            if os.path.exists(self.c.log(name)):
                log = slurp(self.c.log(name), "r")
                self.assertIsNone(re.search(r"ERROR: AddressSanitizer|runtime error:", log), log[-4000:])
        if os.environ.get("TD_KEEP_LOGS"):
            print("logs kept in", self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def start_group(self, name, generations, timeouts=("60", "60")):
        """mpirun -np 2, rank r told --tp-rank r, --tp-generation generations[r]
        and --tp-join-timeout timeouts[r]."""
        self.c.addr[name] = "127.0.0.1:%d" % free_port()
        # each rank its own health port, as each pod has
        self.c.addr[name + "-health"] = ["127.0.0.1:%d" % free_port() for _ in range(2)]
        script = ('r=$OMPI_COMM_WORLD_RANK; if [ "$r" = 0 ]; then g=%s; h=%s; t=%s; else g=%s; h=%s; t=%s; fi; '
                  'exec "$0" "$@" --tp-rank "$r" --tp-generation "$g" --health-listen "$h" --tp-join-timeout "$t"'
                  % (generations[0], self.c.addr[name + "-health"][0], timeouts[0], generations[1],
                     self.c.addr[name + "-health"][1], timeouts[1]))
        return self.c.start(name, [self.mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "2", "sh", "-c",
                                   script, self.worker, "--role", "verifier", "--device", "cuda", "--tp", "2",
                                   "--tp-comm", "nccl", "--tp-group", name,
                                   "--model", self.model, "--listen", self.c.addr[name], "--etcd", self.c.etcd,
                                   "--cluster", "t", "--id", name, "--lease-ttl", TTL, "--threads", "1",
                                   "--max-seqs", "8", "--idle-timeout", "5"],
                            env=dict(os.environ, ASAN_OPTIONS="detect_leaks=0"))  # MPI's allocations outlive it

    def test_group_forms_and_serves(self):
        p = self.start_group("gpu-tp", ("rev1", "rev1"))
        key = "/tandem/t/workers/gpu-tp"

        def reg():
            r = self.c.etcdctl("get", key, "--print-value-only")
            return json.loads(r.stdout) if r.stdout.strip() else None
        wait_for(lambda: reg() is not None or p.poll() is not None, 60, "the group's registration")
        self.assertIsNone(p.poll(), "the group ended: " + slurp(self.c.log("gpu-tp"), "r")[-3000:])
        self.assertEqual(reg()["tp"], 2)
        self.assertIn("backend=cuda", reg()["fingerprint"])
        self.assertIn("numerics=reference", reg()["fingerprint"])
        # rank 0 revoked the id's lease once the group formed
        self.assertEqual(self.c.etcdctl("get", "--prefix", "/tandem/t/groups/", "--keys-only").stdout.strip(), "")
        log = slurp(self.c.log("gpu-tp"), "r")
        self.assertIn("rank 0 of 2 published its id in etcd", log)
        self.assertIn("rank 1 of 2 waiting up to 60 s for rank 0's id in etcd", log)
        self.assertIn("tensor-parallel group gpu-tp formed: rank 1 of 2", log)
        # both pods' probes: rank 0's Worker, rank 1 following
        for rank, service in ((0, "tandem.v1.Worker"), (1, "")):
            with grpc.insecure_channel(self.c.addr["gpu-tp-health"][rank]) as hch:
                wait_for(lambda: hpbg.HealthStub(hch).Check(hpb.HealthCheckRequest(service=service), timeout=2).status
                         == hpb.HealthCheckResponse.SERVING, 30, "rank %d's health port" % rank)
        self.c.start_coordinator()
        prompt = "the cat sat on the mat and the cat sat on the"
        with grpc.insecure_channel(self.c.addr["coordinator"]) as ch:
            health = hpbg.HealthStub(ch)
            wait_for(lambda: health.Check(hpb.HealthCheckRequest(service="tandem.v1.Inference"), timeout=2).status
                     == hpb.HealthCheckResponse.SERVING, 60, "readiness")
            text = b""
            for m in pbg.InferenceStub(ch).Generate(pb.GenerateRequest(
                    prompt=prompt, max_tokens=40, sampling=pb.SamplingParams(seed=0),
                    speculation=pb.SpeculationParams(drafters="lookup")), timeout=180):
                text += m.text.encode()
        # two CPU ranks in the reference order: the GPU ranks' bits (in the
        # sanitizer build without leak checks: MPI's own allocations outlive it)
        local = subprocess.run([self.mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "2",
                                os.path.join(BUILD, "tandem"), "generate", "--tp", "2", "--model", self.model,
                                "--prompt", prompt, "--max-tokens", "40", "--numerics", "reference", "--threads", "1"],
                               capture_output=True, check=True,
                               env=dict(os.environ, ASAN_OPTIONS="detect_leaks=0")).stdout
        self.assertGreater(len(local), 0)
        self.assertEqual(text, local.decode("utf-8", errors="replace").encode())
        # a rollout, as Kubernetes does it: every pod gets SIGTERM. A follower
        # keeps following (the group still serves), rank 0 drains and ends
        # the group, and both ranks exit 0.
        ranks = self.rank_pids(p)
        os.kill(ranks[1], signal.SIGTERM)
        with grpc.insecure_channel(self.c.addr["coordinator"]) as ch:
            again = b""
            for m in pbg.InferenceStub(ch).Generate(pb.GenerateRequest(
                    prompt=prompt, max_tokens=40, sampling=pb.SamplingParams(seed=0),
                    speculation=pb.SpeculationParams(drafters="lookup")), timeout=180):
                again += m.text.encode()
        self.assertEqual(again, text)
        os.kill(ranks[0], signal.SIGTERM)
        self.assertEqual(p.wait(60), 0, slurp(self.c.log("gpu-tp"), "r")[-3000:])
        log = slurp(self.c.log("gpu-tp"), "r")
        for rank in (0, 1):
            self.assertRegex(log, r"verifier\[%d\] INFO stopped" % ranks[rank])

    @staticmethod
    def rank_pids(p):
        """The ranks mpirun started, by the rank their environment names."""
        ranks = {}
        for pid in subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split():
            try:
                with open("/proc/%s/environ" % pid, "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:
                continue
            for r in (0, 1):
                if b"OMPI_COMM_WORLD_RANK=%d" % r in env:
                    ranks[r] = int(pid)
        assert sorted(ranks) == [0, 1], ranks
        return ranks

    def test_another_generation_is_not_joined(self):
        p = self.start_group("gpu-stale", ("rev2", "rev1"), ("60", "3"))
        p.wait(60)
        self.assertNotEqual(p.returncode, 0)
        log = slurp(self.c.log("gpu-stale"), "r")
        self.assertRegex(log, r"etcd rendezvous wait: .*/tandem/t/groups/gpu-stale/nccl-id")
        self.assertIsNone(re.search(r"group gpu-stale formed", log), log)

    def test_a_join_nobody_comes_to_ends(self):
        # rank 1 waits in etcd for another generation (30 s); rank 0 published
        # and waits in NCCL's join, which its watchdog ends after 3 s
        p = self.start_group("gpu-alone", ("rev4", "rev3"), ("3", "30"))
        p.wait(60)
        self.assertNotEqual(p.returncode, 0)
        log = slurp(self.c.log("gpu-alone"), "r")
        self.assertIn("group gpu-alone: rank 0 of 2: the other ranks did not join within 3 s", log)
        self.assertNotIn("etcd rendezvous wait", log)  # rank 1's own timeout never came
        self.assertIsNone(re.search(r"group gpu-alone formed", log), log)


class DefaultModelTest(unittest.TestCase):
    """One check on the real default model: a chat generation through the
    service equals the local one."""

    def test_default_model(self):
        if not DEFAULT_MODEL or not os.path.exists(DEFAULT_MODEL):
            self.skipTest("default model not present")
        tmp = tempfile.mkdtemp(prefix="tandem-service-default-")
        c = Cluster(tmp, DEFAULT_MODEL)
        try:
            c.start_etcd()
            c.start_worker("verifier", "verifier", ["--threads", "2"])
            c.start_coordinator()
            with grpc.insecure_channel(c.addr["coordinator"]) as ch:
                health = hpbg.HealthStub(ch)
                wait_for(lambda: health.Check(hpb.HealthCheckRequest(service="tandem.v1.Inference"), timeout=2).status
                         == hpb.HealthCheckResponse.SERVING, 120, "readiness")
                prompt = "Explain speculative decoding in two sentences."
                local = subprocess.run([os.path.join(BUILD, "tandem"), "generate", "--model", DEFAULT_MODEL, "--chat",
                                        "--prompt", prompt, "--max-tokens", "48"], capture_output=True, check=True).stdout
                text = b""
                for m in pbg.InferenceStub(ch).Generate(pb.GenerateRequest(
                        prompt=prompt, chat=True, max_tokens=48, sampling=pb.SamplingParams(seed=0),
                        speculation=pb.SpeculationParams(drafters="auto")), timeout=120):
                    text += m.text.encode()
                self.assertEqual(text, local)
        finally:
            codes = c.stop_all()
            shutil.rmtree(tmp, ignore_errors=True)
        self.assertTrue(all(v == 0 for k, v in codes.items() if k != "etcd"), codes)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    BUILD = os.path.abspath(sys.argv[1])
    stubs = tempfile.mkdtemp(prefix="tandem-stubs-")
    gen_stubs(stubs)
    from tandem.v1 import inference_pb2 as pb, inference_pb2_grpc as pbg  # noqa: E402
    from tandem.v1 import worker_pb2 as wpb, worker_pb2_grpc as wpbg  # noqa: E402
    import health_pb2 as hpb, health_pb2_grpc as hpbg  # noqa: E402
    shutil.rmtree(stubs, ignore_errors=True)  # loaded: the files may go
    args = sys.argv[2:]
    if "--default-model" in args:
        DEFAULT_MODEL = args[args.index("--default-model") + 1]
        args = [a for a in args if a not in ("--default-model", DEFAULT_MODEL)]
    unittest.main(argv=[sys.argv[0]] + args, verbosity=2)
