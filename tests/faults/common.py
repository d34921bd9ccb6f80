"""common.py — pieces shared by the fault suite and the soak: protobuf stubs
generated at run time from proto/ (nothing generated is committed), free
ports, a throwaway PKI (openssl), and a Cluster of real processes (Debian's
etcd, tandem-coordinator, tandem-worker, mpirun for tensor-parallel groups)
each remembered by PID and stopped by PID, also on failure. A Cluster made
with `tls` runs hardened: TLS + bearer tokens on the coordinator's public
port, mutual TLS coordinator -> workers, a plaintext health-only port.
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


def make_pki(d, extra_ips=()):
    """A throwaway CA, a certificate for 127.0.0.1/localhost (+ extra_ips;
    coordinator and workers share it) and a client certificate (the
    coordinator's, to the workers), all signed by the CA; the token files.
    Returns a dict of paths plus "token" (the bearer token itself)."""
    san = ",".join(["IP:127.0.0.1", "DNS:localhost"] + ["IP:" + ip for ip in extra_ips])
    sh = ("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=tandem-test-ca -keyout ca.key -out ca.pem && "
          "printf 'subjectAltName=%s\\n' > server.ext && "
          "openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr && "
          "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile server.ext "
          "-out server.pem && "
          "openssl req -newkey rsa:2048 -nodes -subj /CN=tandem-coordinator -keyout client.key -out client.csr && "
          "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -out client.pem") % san
    subprocess.run(["sh", "-c", sh], cwd=d, check=True, capture_output=True)
    pki = {k: os.path.join(d, k) for k in ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem",
                                           "client.key")}
    # a fresh token per run: a hit in a log can only come from this run
    pki["token"] = "tok-" + os.urandom(16).hex()
    pki["tokens"] = os.path.join(d, "tokens")        # the coordinator's --auth-tokens
    with open(pki["tokens"], "w") as f:
        f.write("# tokens of this cluster\nother-token-not-used\n%s\n" % pki["token"])
    pki["client-token"] = os.path.join(d, "client-token")  # tandem score --token-file
    with open(pki["client-token"], "w") as f:
        f.write(pki["token"] + "\n")
    return pki


def slurp(path):
    with open(path, "rb") as f:
        return f.read()


def secrets_in_logs(tmp, pki):
    """Every *.log under tmp searched for the token and the private keys'
    text (read after the processes ended): a list of 'file: what' hits."""
    keys = []
    for k in ("server.key", "client.key", "ca.key"):
        keys += [l for l in slurp(pki[k]).decode().splitlines() if l and not l.startswith("-----")]
    hits = []
    for root, _, files in os.walk(tmp):
        for name in files:
            if not name.endswith(".log"):
                continue
            text = slurp(os.path.join(root, name)).decode(errors="replace")
            if pki["token"] in text:
                hits.append(name + ": the token")
            if "PRIVATE KEY" in text or any(l in text for l in keys):
                hits.append(name + ": private key text")
    return hits


def mpi_ranks(mpirun_pid):
    """rank -> pid of the processes an mpirun started (its children whose
    environment names their rank)."""
    ranks = {}
    r = subprocess.run(["pgrep", "-P", str(mpirun_pid)], capture_output=True, text=True)
    for pid in r.stdout.split():
        try:
            with open("/proc/%s/environ" % pid, "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        for e in env:
            if e.startswith(b"OMPI_COMM_WORLD_RANK="):
                ranks[int(e.split(b"=")[1])] = int(pid)
    return ranks


class Cluster:
    """Processes of one test cluster, each remembered by PID (name -> Popen)."""

    def __init__(self, build, tmp, model, ttl="2", etcd_extra_hosts=(), tls=None):
        self.build, self.tmp, self.model, self.ttl = build, tmp, model, ttl
        self.procs, self.addr = {}, {}
        self.etcd_port, self.peer_port = free_port(), free_port()
        self.etcd = "127.0.0.1:%d" % self.etcd_port
        self.etcd_extra_hosts = list(etcd_extra_hosts)  # more addresses etcd listens on (a veth)
        self.tls = tls  # make_pki's dict: run hardened
        self.rank_pids = {}  # TP group name -> {rank: pid}, killed by PID at the end if still there

    # ---- channels as a client of this cluster sees them ----
    def creds(self):
        """Channel credentials for the coordinator's public port (None: plaintext)."""
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(root_certificates=slurp(self.tls["ca.pem"]))

    def metadata(self):
        """Metadata every Inference call carries (the bearer token when hardened)."""
        return [("authorization", "Bearer " + self.tls["token"])] if self.tls else None

    def channel(self, name, options=None):
        """A channel to a process of the cluster: the coordinator's with the
        CA, a worker's with the coordinator's client certificate (mTLS)."""
        addr = self.addr[name]
        if not self.tls:
            return grpc.insecure_channel(addr, options=options)
        if name.startswith("coordinator"):
            return grpc.secure_channel(addr, self.creds(), options=options)
        creds = grpc.ssl_channel_credentials(root_certificates=slurp(self.tls["ca.pem"]),
                                             private_key=slurp(self.tls["client.key"]),
                                             certificate_chain=slurp(self.tls["client.pem"]))
        return grpc.secure_channel(addr, creds, options=options)

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

    def worker_tls_flags(self):
        if not self.tls:
            return []
        return ["--tls-cert", self.tls["server.pem"], "--tls-key", self.tls["server.key"],
                "--tls-client-ca", self.tls["ca.pem"]]

    def worker_argv(self, name, role, listen, etcd=None, model=None):
        return [os.path.join(self.build, "tandem-worker"), "--role", role, "--model", model or self.model,
                "--listen", listen, "--etcd", etcd or self.etcd, "--cluster", "t", "--id", name,
                "--lease-ttl", self.ttl, "--threads", "1", "--max-seqs", "8", "--idle-timeout", "5"] + \
            self.worker_tls_flags()

    def start_worker(self, name, role, extra=(), listen=None, etcd=None, prefix=(), model=None):
        if listen is None:
            listen = "127.0.0.1:%d" % free_port()
        self.addr[name] = listen
        self.start(name, list(prefix) + self.worker_argv(name, role, listen, etcd, model) + list(extra))

    def start_tp_group(self, name, n, extra=(), model=None):
        """A tensor-parallel verifier group: `mpirun -np n tandem-worker --tp n`;
        rank 0 serves on self.addr[name] and registers as `name`. The Popen
        is mpirun's; mpi_ranks() finds the ranks."""
        mpirun = shutil.which("mpirun")
        self.addr[name] = "127.0.0.1:%d" % free_port()
        self.start(name, [mpirun, "--allow-run-as-root", "--oversubscribe", "-np", str(n)] +
                   self.worker_argv(name, "verifier", self.addr[name], model=model) + ["--tp", str(n)] + list(extra))
        wait_for(lambda: len(mpi_ranks(self.pid(name))) == n, 30, "the %d ranks of %s" % (n, name))
        self.rank_pids[name] = mpi_ranks(self.pid(name))

    def start_coordinator(self, name="coordinator", extra=()):
        port = free_port()
        self.addr[name] = "127.0.0.1:%d" % port
        sec = []
        if self.tls:
            self.addr[name + "-health"] = "127.0.0.1:%d" % free_port()
            sec = ["--tls-cert", self.tls["server.pem"], "--tls-key", self.tls["server.key"],
                   "--auth-tokens", self.tls["tokens"], "--worker-tls-ca", self.tls["ca.pem"],
                   "--worker-tls-cert", self.tls["client.pem"], "--worker-tls-key", self.tls["client.key"],
                   "--health-listen", self.addr[name + "-health"]]
        self.start(name, [os.path.join(self.build, "tandem-coordinator"), "--listen", self.addr[name],
                          "--etcd", self.etcd, "--cluster", "t",
                          "--step-timeout-ms", "1500", "--keepalive-ms", "1000"] + sec + list(extra))

    def wait_ready(self, name="coordinator", verifiers=None, drafters=None, timeout=60):
        # (over TLS when hardened: health needs no token, ListModels does)
        with self.channel(name) as ch:
            health = hpbg.HealthStub(ch)
            wait_for(lambda: health.Check(hpb.HealthCheckRequest(service="tandem.v1.Inference"), timeout=2).status
                     == hpb.HealthCheckResponse.SERVING, timeout, name + " readiness")
            if verifiers is not None or drafters is not None:
                api = pbg.InferenceStub(ch)

                def counts():
                    m = api.ListModels(pb.ListModelsRequest(), timeout=2, metadata=self.metadata()).models
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
        # ranks of a TP group that outlived their mpirun (it was killed, or
        # lost track of them): by PID, each checked to be the rank we started
        for group, ranks in self.rank_pids.items():
            for rank, pid in ranks.items():
                try:
                    with open("/proc/%d/cmdline" % pid, "rb") as f:
                        if b"tandem-worker" not in f.read():
                            continue
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
                    codes["%s-rank%d" % (group, rank)] = "left over, killed"
                except OSError:
                    pass
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
