"""test_chart_cluster.py — the chart's pods, run on loopback: the closest
thing to installing helm/tandem that a machine without Kubernetes allows.

Renders the chart (Helm's engine, helm-python-sdk) with a drafter and the
scoring Job enabled, takes the command lines of the coordinator, verifier
and drafter containers and of the Job's pods exactly as rendered, and
changes only what Kubernetes would supply: binaries from BUILD_DIR,
0.0.0.0:PORT to a free loopback port, $(POD_NAME) / $(POD_IP) / the
advertised DNS name, the etcd endpoints (Debian's etcd here), the model
path (a tiny generated model) and the Job's volume. Then checks that:

- the coordinator turns ready (its readiness probe's service on the health
  port the probes use) and every process answers its liveness service;
- the Job's pods, index 0..N-1 run one after another, together score every
  item of the input exactly once (--shard $(JOB_COMPLETION_INDEX)/N), and a
  pod run again (a restarted index) adds nothing;
- /metrics on each process's metrics port counts what happened;
- with etcd stopped, liveness still answers SERVING on every process
  (the chart's liveness probe must not restart pods when etcd is away).

Usage: python test_chart_cluster.py BUILD_DIR    (from tests/helm/run.sh)
Every process is started here and stopped by PID, also on failure.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import helm_python as helm
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CHART = os.path.join(HERE, "..", "..", "helm", "tandem")
SHARDS = 3
VALUES = {
    "models": [{"name": "tiny", "file": "tiny.gguf", "source": "pvc", "pvc": {"claimName": "models"},
                "verifier": {"replicas": 1, "tp": 1, "threads": 1, "maxSeqs": 8, "numerics": "fast", "gpus": 0},
                "drafter": {"enabled": True, "replicas": 1, "threads": 1}}],
    "scoreJob": {"enabled": True, "name": "run", "shards": SHARDS, "parallelism": SHARDS,
                 "pvc": {"claimName": "data"}, "input": "items.jsonl", "outputDir": "out", "batch": 2},
}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rendered_argvs():
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(VALUES, name="t", namespace="ns")
    out = {}
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        for o in yaml.safe_load_all(text):
            if not o or o["kind"] not in ("Deployment", "StatefulSet", "Job"):
                continue
            c = o["spec"]["template"]["spec"]["containers"][0]
            out[o["metadata"]["labels"]["app.kubernetes.io/component"]] = c.get("command", []) + c.get("args", [])
    return out


class Procs:
    def __init__(self, tmp):
        self.tmp, self.p = tmp, {}

    def start(self, name, argv):
        with open(os.path.join(self.tmp, name + ".log"), "ab") as f:
            self.p[name] = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)

    def stop(self, name):
        p = self.p.pop(name)
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return p.returncode

    def log(self, name):
        with open(os.path.join(self.tmp, name + ".log"), errors="replace") as f:
            return f.read()[-3000:]


def localize(argv, build, name, etcd, model, ports):
    """The rendered argv with what Kubernetes supplies replaced; ports maps
    the flag that bound 0.0.0.0:P to the loopback address chosen."""
    out = []
    for i, a in enumerate(argv):
        prev = argv[i - 1] if i else ""
        if i == 0 and a.startswith("tandem"):
            a = os.path.join(build, a)
        elif re.fullmatch(r"0\.0\.0\.0:\d+", a):
            ports[prev] = "127.0.0.1:%d" % free_port()
            a = ports[prev]
        elif prev == "--etcd":
            a = etcd
        elif prev == "--model":
            a = model
        elif prev == "--id":
            a = a.replace("$(POD_NAME)", name)
        elif prev == "--advertise":
            a = ports["--listen"]  # --listen comes first in the chart's workers
        out.append(a)
    return out


def health(build, addr, service):
    r = subprocess.run([os.path.join(build, "tandem"), "health", "--server", addr, "--service", service],
                       capture_output=True, timeout=30)
    return r.returncode == 0


def wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting for " + what)


def scrape(addr):
    with urllib.request.urlopen("http://%s/metrics" % addr, timeout=10) as r:
        text = r.read().decode()
    return {l.rsplit(" ", 1)[0]: float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l and not l.startswith("#")}


def main():
    build = os.path.abspath(sys.argv[1])
    argvs = rendered_argvs()
    for role in ("coordinator", "verifier", "drafter", "score"):
        assert role in argvs, "no %s rendered" % role
    tmp = tempfile.mkdtemp(prefix="tandem-chart-")
    procs = Procs(tmp)
    ok = False
    try:
        model = os.path.join(tmp, "tiny.gguf")
        subprocess.run([os.path.join(build, "td-mktiny"), model, "--ctx", "2048"], check=True, capture_output=True)
        cport, pport = free_port(), free_port()
        etcd = "127.0.0.1:%d" % cport
        procs.start("etcd", ["etcd", "--name", "t", "--data-dir", os.path.join(tmp, "etcd"),
                             "--listen-client-urls", "http://" + etcd, "--advertise-client-urls", "http://" + etcd,
                             "--listen-peer-urls", "http://127.0.0.1:%d" % pport,
                             "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % pport,
                             "--initial-cluster", "t=http://127.0.0.1:%d" % pport])
        ports = {}
        for role in ("verifier", "drafter", "coordinator"):
            ports[role] = {}
            argv = localize(argvs[role], build, role + "-0", etcd, model, ports[role])
            print("[chart] %s: %s" % (role, " ".join(argv)))
            procs.start(role, argv)
        caddr, chealth = ports["coordinator"]["--listen"], ports["coordinator"]["--health-listen"]
        wait_for(lambda: health(build, chealth, "tandem.v1.Inference"), 90, "the coordinator's readiness")
        wait_for(lambda: scrape(ports["coordinator"]["--metrics-listen"]).get('tandem_workers_known{role="drafter"}')
                 == 1, 30, "the drafter known")
        for role in ("verifier", "drafter", "coordinator"):
            assert health(build, ports[role]["--health-listen"], ""), role + ": liveness not SERVING"
        print("[chart] coordinator ready; every process live")

        # the Job's pods, one index after another, over one input
        items = [{"custom_id": "i%d" % i, "prompt": "the cat number %d" % i, "continuation": " sat on the mat"}
                 for i in range(11)]
        with open(os.path.join(tmp, "items.jsonl"), "w") as f:
            f.write("".join(json.dumps(it) + "\n" for it in items))
        os.makedirs(os.path.join(tmp, "out"))
        job = [a.replace("/data/", tmp + "/") for a in argvs["score"]]
        job[0] = os.path.join(build, job[0])
        job[job.index("--server") + 1] = caddr

        def run_index(i):
            argv = [a.replace("$(JOB_COMPLETION_INDEX)", str(i)) for a in job]
            r = subprocess.run(argv, capture_output=True, timeout=300)
            assert r.returncode == 0, "score index %d: %s" % (i, r.stderr.decode(errors="replace")[-2000:])
            return argv[argv.index("--out") + 1]

        outs = [run_index(i) for i in range(SHARDS)]
        run_index(1)  # a restarted index: resumes, adds nothing
        seen = []
        for o in outs:
            with open(o) as f:
                seen += [json.loads(l)["custom_id"] for l in f if l.strip()]
        assert sorted(seen) == sorted(it["custom_id"] for it in items), "items scored: %s" % sorted(seen)
        print("[chart] %d Job indexes scored all %d items exactly once" % (SHARDS, len(items)))

        m = scrape(ports["coordinator"]["--metrics-listen"])
        assert m.get("tandem_scored_items_total") == len(items), m.get("tandem_scored_items_total")
        v = scrape(ports["verifier"]["--metrics-listen"])
        assert v.get('tandem_grpc_requests_total{server="worker",method="/tandem.v1.Worker/Score",code="OK"}', 0) > 0
        assert scrape(ports["drafter"]["--metrics-listen"]).get("tandem_etcd_up") == 1
        print("[chart] metrics counted the scoring")

        assert procs.stop("etcd") in (0, -15)
        time.sleep(1)
        for role in ("verifier", "drafter", "coordinator"):
            assert health(build, ports[role]["--health-listen"], ""), role + ": liveness failed with etcd away"
        print("[chart] etcd stopped: every process still live")
        codes = {r: procs.stop(r) for r in ("coordinator", "drafter", "verifier")}
        assert all(c == 0 for c in codes.values()), "exit codes on SIGTERM: %s" % codes
        ok = True
        print("[chart] the rendered pods ran as a cluster: ok")
    finally:
        if not ok:
            for name in list(procs.p):
                print("---- %s.log ----\n%s" % (name, procs.log(name)))
        for name in list(procs.p):
            procs.stop(name)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
