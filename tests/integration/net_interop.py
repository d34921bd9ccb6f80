#!/usr/bin/python3
"""net_interop.py — tandem's gRPC server against an independent client:
Python's grpcio (Debian's, under /usr/bin/python3) calls td-net-echo's
grpc.health.v1.Health with stubs generated here, at test time, into a
temporary directory (nothing generated is committed).

Checks: Check answers SERVING; Check of an unknown service is NOT_FOUND with
the server's message; Watch streams SERVING, NOT_SERVING, SERVING and ends
OK; three bytes that are no HealthCheckRequest (sent with identity
serializers) get INVALID_ARGUMENT naming the type; an unknown method is
UNIMPLEMENTED; the server stops cleanly on SIGTERM.

Usage: /usr/bin/python3 net_interop.py PATH/TO/td-net-echo
"""
import os
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(HERE, "..", "..", "proto")


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def gen_stubs(out):
    from grpc_tools import protoc

    # rooted at the file's own folder: the stubs become top-level modules
    # (health_pb2), clear of grpcio's own "grpc" package
    src = os.path.join(PROTO_ROOT, "grpc", "health", "v1")
    rc = protoc.main(["protoc", "-I" + src, "--python_out=" + out, "--grpc_python_out=" + out,
                      os.path.join(src, "health.proto")])
    if rc != 0:
        fail("grpc_tools.protoc exited with %d" % rc)
    sys.path.insert(0, out)


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    import grpc

    with tempfile.TemporaryDirectory() as tmp:
        gen_stubs(tmp)
        import health_pb2  # generated just now
        import health_pb2_grpc
    # the modules are loaded; the directory may go
    server = subprocess.Popen([sys.argv[1], "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline().split()
        if len(line) != 2 or line[0] != "port":
            fail("server did not print its port: %r" % line)
        target = "127.0.0.1:" + line[1]
        with grpc.insecure_channel(target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            if r.status != health_pb2.HealthCheckResponse.SERVING:
                fail("Check: %r" % r)
            try:
                stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
                fail("Check(nope) succeeded")
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND or e.details() != "unknown service nope":
                    fail("Check(nope): %s %r" % (e.code(), e.details()))
            got = [m.status for m in stub.Watch(health_pb2.HealthCheckRequest(), timeout=10)]
            want = [health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING,
                    health_pb2.HealthCheckResponse.SERVING]
            if got != want:
                fail("Watch: %r, want %r" % (got, want))
            raw = ch.unary_unary("/grpc.health.v1.Health/Check", request_serializer=lambda b: b,
                                 response_deserializer=lambda b: b)
            try:
                raw(b"\xff\xff\xff", timeout=10)
                fail("garbage bytes accepted")
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.INVALID_ARGUMENT or "grpc.health.v1.HealthCheckRequest" not in e.details():
                    fail("garbage: %s %r" % (e.code(), e.details()))
            other = ch.unary_unary("/grpc.health.v1.Health/Nope", request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
            try:
                other(b"", timeout=10)
                fail("unknown method accepted")
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                    fail("unknown method: %s %r" % (e.code(), e.details()))
        server.send_signal(signal.SIGTERM)
        rc = server.wait(timeout=30)
        if rc != 0:
            fail("server exited with %d after SIGTERM" % rc)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    print("net_interop: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
