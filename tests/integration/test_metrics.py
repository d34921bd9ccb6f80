#!/usr/bin/python3
"""test_metrics.py — Prometheus /metrics on a running cluster (etcd, a
coordinator, a verifier and a drafter on loopback, each with
--metrics-listen): every endpoint's text parses with prometheus_client's
own parser (Debian's python3-prometheus-client), and after a few requests
the counters moved by exactly what the requests reported (calls by method
and status, prompt and generated tokens, drafted and accepted tokens, TTFT
observations, scored items and tokens, worker calls), the gauges say what
the cluster is (workers known by role, etcd up, the worker's limits), and
the endpoints refuse anything but GET /metrics with the right status.

Usage: /usr/bin/python3 test_metrics.py BUILD_DIR
Reuses test_service.py's Cluster; every process is stopped by PID.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_service as ts  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import grpc  # noqa: E402

pb = pbg = hpb = hpbg = None


def scrape(addr):
    """{(sample name, frozenset(labels)): value} of one endpoint."""
    with urllib.request.urlopen("http://%s/metrics" % addr, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4"), r.headers["Content-Type"]
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def val(m, name, **labels):
    return m.get((name, frozenset(labels.items())), 0.0)


def raw(addr, data):
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        got = b""
        while True:
            b = s.recv(65536)
            if not b:
                return got
            got += b


class MetricsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="tandem-metrics-")
        model = os.path.join(cls.tmp, "tiny.gguf")
        subprocess.run([os.path.join(ts.BUILD, "td-mktiny"), model, "--ctx", "2048"], check=True, capture_output=True)
        cls.c = ts.Cluster(cls.tmp, model)
        cls.m = {n: "127.0.0.1:%d" % ts.free_port() for n in ("coordinator", "verifier", "drafter")}
        try:
            cls.c.start_etcd()
            cls.c.start_worker("verifier", "verifier", ["--metrics-listen", cls.m["verifier"]])
            cls.c.start_worker("drafter", "drafter", ["--metrics-listen", cls.m["drafter"]])
            cls.c.start_coordinator(["--metrics-listen", cls.m["coordinator"], "--max-connection-age-ms", "600000"])
            cls.ch = grpc.insecure_channel(cls.c.addr["coordinator"])
            cls.api = pbg.InferenceStub(cls.ch)
            health = hpbg.HealthStub(cls.ch)
            ts.wait_for(lambda: health.Check(hpb.HealthCheckRequest(service="tandem.v1.Inference"), timeout=2).status
                        == hpb.HealthCheckResponse.SERVING, 60, "coordinator readiness")
            ts.wait_for(lambda: val(scrape(cls.m["coordinator"]), "tandem_workers_known", role="drafter") == 1, 30,
                        "the drafter known")
        except Exception:
            cls.c.stop_all()
            raise

    @classmethod
    def tearDownClass(cls):
        codes = cls.c.stop_all()
        cls.ch.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        bad = {k: v for k, v in codes.items() if v not in (0, None) and not (k == "etcd" and v == -15)}
        assert not bad, "processes did not exit 0 on SIGTERM: %s" % bad

    def test_1_counters_move_by_what_requests_report(self):
        before = {n: scrape(a) for n, a in self.m.items()}
        prompt = "the quick brown fox jumps over the lazy dog and the quick brown fox"
        usage = []
        for drafters in ("none", "auto,model"):
            last = None
            for msg in self.api.Generate(pb.GenerateRequest(prompt=prompt, max_tokens=12, ignore_eos=True,
                                                            sampling=pb.SamplingParams(seed=0),
                                                            speculation=pb.SpeculationParams(drafters=drafters)),
                                         timeout=60):
                last = msg
            self.assertTrue(last.done)
            usage.append(last)
        with self.assertRaises(grpc.RpcError) as e:
            list(self.api.Generate(pb.GenerateRequest(prompt=prompt, max_tokens=12,
                                                      sampling=pb.SamplingParams(top_p=7)), timeout=30))
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        items = [pb.ScoreItem(id="a", prompt="the cat", continuation=" sat on the mat"),
                 pb.ScoreItem(id="b", prompt="a dog", continuation=" ran")]
        sr = self.api.Score(pb.ScoreRequest(items=items), timeout=60)
        scored = sum(r.token_count for r in sr.results)
        gen = "/tandem.v1.Inference/Generate"
        after = {}

        def d(proc, name, **labels):
            return val(after[proc], name, **labels) - val(before[proc], name, **labels)

        # a call is counted when its handler thread ends, which may be just
        # after the client has its answer: scrape until all three are in
        for _ in range(100):
            after.update({n: scrape(a) for n, a in self.m.items()})
            if d("coordinator", "tandem_grpc_request_duration_seconds_count", method=gen) >= 3 and \
                    d("coordinator", "tandem_grpc_requests_total", server="coordinator",
                      method="/tandem.v1.Inference/Score", code="OK") >= 1:
                break
            time.sleep(0.05)
        self.assertEqual(d("coordinator", "tandem_grpc_requests_total", server="coordinator", method=gen, code="OK"), 2)
        self.assertEqual(d("coordinator", "tandem_grpc_requests_total", server="coordinator", method=gen,
                           code="INVALID_ARGUMENT"), 1)
        self.assertEqual(d("coordinator", "tandem_grpc_requests_total", server="coordinator",
                           method="/tandem.v1.Inference/Score", code="OK"), 1)
        self.assertEqual(d("coordinator", "tandem_grpc_request_duration_seconds_count", method=gen), 3)
        self.assertEqual(d("coordinator", "tandem_prompt_tokens_total"), sum(u.usage.prompt_tokens for u in usage))
        self.assertEqual(d("coordinator", "tandem_generated_tokens_total"),
                         sum(u.usage.completion_tokens for u in usage))
        self.assertEqual(d("coordinator", "tandem_spec_drafted_tokens_total"),
                         sum(u.speculation.drafted for u in usage))
        self.assertEqual(d("coordinator", "tandem_spec_accepted_tokens_total"),
                         sum(u.speculation.accepted for u in usage))
        self.assertEqual(d("coordinator", "tandem_spec_verify_steps_total"), sum(u.speculation.steps for u in usage))
        self.assertEqual(d("coordinator", "tandem_time_to_first_token_seconds_count"), 2)
        self.assertEqual(d("coordinator", "tandem_time_per_output_token_seconds_count"), 2)
        self.assertEqual(d("coordinator", "tandem_scored_items_total"), 2)
        self.assertEqual(d("coordinator", "tandem_scored_tokens_total"), scored)
        self.assertGreater(scored, 0)
        self.assertEqual(val(after["coordinator"], "tandem_grpc_requests_in_flight", server="coordinator"), 0)
        self.assertEqual(val(after["coordinator"], "tandem_workers_known", role="verifier"), 1)
        self.assertEqual(val(after["coordinator"], "tandem_workers_known", role="drafter"), 1)
        self.assertEqual(val(after["coordinator"], "tandem_etcd_up"), 1)
        # the verifier: one Prefill per admitted Generate, Verify calls, the scoring share
        self.assertEqual(d("verifier", "tandem_grpc_requests_total", server="worker",
                           method="/tandem.v1.Worker/Prefill", code="OK"), 2)
        self.assertGreater(d("verifier", "tandem_grpc_requests_total", server="worker",
                             method="/tandem.v1.Worker/Verify", code="OK"), 0)
        self.assertEqual(d("verifier", "tandem_grpc_requests_total", server="worker",
                           method="/tandem.v1.Worker/Score", code="OK"), 1)
        self.assertEqual(val(after["verifier"], "tandem_worker_sequences_max"), 8)
        self.assertGreater(val(after["verifier"], "tandem_worker_kv_tokens_max"), 0)
        self.assertEqual(val(after["verifier"], "tandem_etcd_up"), 1)
        self.assertEqual(val(after["verifier"], "tandem_etcd_registrations"), 1)
        # the drafter drafted for the "model" request
        self.assertGreater(d("drafter", "tandem_grpc_requests_total", server="worker",
                             method="/tandem.v1.Worker/Draft", code="OK"), 0)
        self.assertEqual(val(after["drafter"], "tandem_etcd_up"), 1)

    def test_2_refusals(self):
        for addr in self.m.values():
            for path, method, code in (("/", "GET", 404), ("/metrics", "POST", 405), ("/metrics", "HEAD", 405)):
                req = urllib.request.Request("http://%s%s" % (addr, path), method=method)
                with self.assertRaises(urllib.error.HTTPError) as e:
                    urllib.request.urlopen(req, timeout=10)
                self.assertEqual(e.exception.code, code)
            self.assertTrue(raw(addr, b"\x00\x01garbage\r\n\r\n").startswith(b"HTTP/1.1 400 "))
            self.assertTrue(raw(addr, b"GET /metrics HTTP/3.0\r\n\r\n").startswith(b"HTTP/1.1 505 "))
            self.assertTrue(raw(addr, b"A" * 10000).startswith(b"HTTP/1.1 431 "))
            scrape(addr)  # and it still serves


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    ts.BUILD = os.path.abspath(sys.argv[1])
    stubs = tempfile.mkdtemp(prefix="tandem-stubs-")
    ts.gen_stubs(stubs)
    from tandem.v1 import inference_pb2 as pb, inference_pb2_grpc as pbg  # noqa: E402,F811
    import health_pb2 as hpb, health_pb2_grpc as hpbg  # noqa: E402,F811
    shutil.rmtree(stubs, ignore_errors=True)
    unittest.main(argv=[sys.argv[0]] + sys.argv[2:], verbosity=2)
