"""common.py — pieces shared by the fault suite and the soak: protobuf stubs
generated at run time from proto/ (nothing generated is committed), free
ports, and a Cluster of real processes (Debian's etcd, tandem-coordinator,
tandem-worker) each remembered by PID and stopped by PID, also on failure.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join(HERE, "..", "..", "proto")

import grpc  # noqa: E402  (Debian's python3-grpcio)

pb = pbg = wpb = wpbg = hpb = hpbg = None


def load_stubs():
    """Generates the stubs into a temp dir, imports them, removes the dir."""
    global pb, pbg, wpb, wpbg, hpb, hpbg
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="tandem-fault-stubs-")
    try:
        args = ["protoc", "-I" + PROTO, "--python_out=" + out, "--grpc_python_out=" + out,
                os.path.join(PROTO, "tandem", "v1", "inference.proto"),
                os.path.join(PROTO, "tandem", "v1", "worker.proto")]
        assert protoc.main(args) == 0, "protoc failed on tandem protos"
        hsrc = os.path.join(PROTO, "grpc", "health", "v1")
        assert protoc.main(["protoc", "-I" + hsrc, "--python_out=" + out, "--grpc_python_out=" + out,
                            os.path.join(hsrc, "health.proto")]) == 0
        sys.path.insert(0, out)
        from tandem.v1 import inference_pb2, inference_pb2_grpc, worker_pb2, worker_pb2_grpc
        import health_pb2
        import health_pb2_grpc
        pb, pbg, wpb, wpbg, hpb, hpbg = (inference_pb2, inference_pb2_grpc, worker_pb2, worker_pb2_grpc,
                                         health_pb2, health_pb2_grpc)
    finally:
        sys.path.remove(out) if out in sys.path else None
        shutil.rmtree(out, ignore_errors=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            if pred():
                return
        except Exception as e:  # not up yet
            last = e
        time.sleep(0.1)
    raise AssertionError("timed out waiting for %s (%s)" % (what, last))


class Cluster:
    """Processes of one test cluster, each remembered by PID (name -> Popen)."""

    def __init__(self, build, tmp, model, ttl="2", etcd_extra_hosts=()):
        self.build, self.tmp, self.model, self.ttl = build, tmp, model, ttl
        self.procs, self.addr = {}, {}
        self.etcd_port, self.peer_port = free_port(), free_port()
        self.etcd = "127.0.0.1:%d" % self.etcd_port
        self.etcd_extra_hosts = list(etcd_extra_hosts)  # more addresses etcd listens on (a veth)

    def log(self, name):
        return os.path.join(self.tmp, name + ".log")

    def start(self, name, argv):
        f = open(self.log(name), "ab")
        self.procs[name] = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)
        f.close()
        return self.procs[name]

    def pid(self, name):
        return self.procs[name].pid

    def etcd_data(self):
        return os.path.join(self.tmp, "etcd-data")

    def start_etcd(self, wipe=False):
        if wipe:
            shutil.rmtree(self.etcd_data(), ignore_errors=True)
        urls = ",".join("http://%s:%d" % (h, self.etcd_port) for h in ["127.0.0.1"] + self.etcd_extra_hosts)
        self.start("etcd", ["etcd", "--name", "t", "--data-dir", self.etcd_data(),
                            "--listen-client-urls", urls, "--advertise-client-urls", "http://" + self.etcd,
                            "--listen-peer-urls", "http://127.0.0.1:%d" % self.peer_port,
                            "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % self.peer_port,
                            "--initial-cluster", "t=http://127.0.0.1:%d" % self.peer_port])
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.etcdctl("endpoint", "health").returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("etcd did not start: " + open(self.log("etcd")).read()[-2000:])

    def etcdctl(self, *args):
        env = dict(os.environ, ETCDCTL_API="3")
        return subprocess.run(["etcdctl", "--endpoints", self.etcd, "--command-timeout", "3s"] + list(args),
                              capture_output=True, text=True, env=env)

    def registered(self):
        r = self.etcdctl("get", "--prefix", "/tandem/t/workers/", "--print-value-only")
        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]

    def start_worker(self, name, role, extra=(), listen=None, etcd=None, prefix=()):
        if listen is None:
            listen = "127.0.0.1:%d" % free_port()
        self.addr[name] = listen
        self.start(name, list(prefix) + [
            os.path.join(self.build, "tandem-worker"), "--role", role, "--model", self.model,
            "--listen", listen, "--etcd", etcd or self.etcd, "--cluster", "t", "--id", name,
            "--lease-ttl", self.ttl, "--threads", "1", "--max-seqs", "8", "--idle-timeout", "5"] + list(extra))

    def start_coordinator(self, name="coordinator", extra=()):
        port = free_port()
        self.addr[name] = "127.0.0.1:%d" % port
        self.start(name, [os.path.join(self.build, "tandem-coordinator"), "--listen", self.addr[name],
                          "--etcd", self.etcd, "--cluster", "t",
                          "--step-timeout-ms", "1500", "--keepalive-ms", "1000"] + list(extra))

    def wait_ready(self, name="coordinator", verifiers=None, drafters=None, timeout=60):
        with grpc.insecure_channel(self.addr[name]) as ch:
            health = hpbg.HealthStub(ch)
            wait_for(lambda: health.Check(hpb.HealthCheckRequest(service="tandem.v1.Inference"), timeout=2).status
                     == hpb.HealthCheckResponse.SERVING, timeout, name + " readiness")
            if verifiers is not None or drafters is not None:
                api = pbg.InferenceStub(ch)

                def counts():
                    m = api.ListModels(pb.ListModelsRequest(), timeout=2).models
                    return len(m) == 1 and (verifiers is None or m[0].verifiers == verifiers) and \
                        (drafters is None or m[0].drafters == drafters)
                wait_for(counts, timeout, "%s to see %s verifiers, %s drafters" % (name, verifiers, drafters))

    def alive(self, name):
        p = self.procs.get(name)
        return p is not None and p.poll() is None

    def send(self, name, sig):
        self.procs[name].send_signal(sig)

    def stop(self, name, sig=signal.SIGTERM, wait=15):
        p = self.procs.pop(name, None)
        if not p:
            return None
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
                p.send_signal(sig)
                p.wait(wait)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return p.returncode

    def stop_all(self):
        codes = {}
        names = [n for n in self.procs if n.startswith("coordinator")]
        names += [n for n in self.procs if n not in names and n != "etcd"]
        for name in names + ["etcd"]:
            if name in self.procs:
                codes[name] = self.stop(name)
        return codes


def proc_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def proc_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def make_tiny_model(build, tmp):
    path = os.path.join(tmp, "tiny.gguf")
    subprocess.run([os.path.join(build, "td-mktiny"), path, "--ctx", "2048"], check=True, capture_output=True)
    return path
