#!/usr/bin/python3
"""service_streams.py — aggregate decoding throughput of a running tandem
cluster at 1, 4 and 16 concurrent streams, with short chat prompts (so the
figure is about decoding and worker-side batching, not prefill; see
service_bench.py for the Spec-Bench prompts, where prefill weighs in).
Prints figures; asserts nothing.

usage: /usr/bin/python3 tests/bench/service_streams.py ADDR [DRAFTERS] [TOKENS]
  e.g. deploy/local/up.sh; .../service_streams.py $(cat /tmp/tandem-local/address) none
"""
import os
import sys
import tempfile
import threading
import time

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
PROMPTS = ["Tell me about the history of Rome.", "Write a poem about the sea.",
           "Explain how a CPU cache works.", "List five fruits and describe them."]


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    addr = sys.argv[1]
    drafters = sys.argv[2] if len(sys.argv) > 2 else "none"
    tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    from grpc_tools import protoc
    stubs = tempfile.mkdtemp(prefix="tandem-stubs-")
    proto = os.path.join(HERE, "..", "..", "proto")
    assert protoc.main(["protoc", "-I" + proto, "--python_out=" + stubs, "--grpc_python_out=" + stubs,
                        os.path.join(proto, "tandem", "v1", "inference.proto")]) == 0
    sys.path.insert(0, stubs)
    from tandem.v1 import inference_pb2 as pb, inference_pb2_grpc as pbg
    api = pbg.InferenceStub(grpc.insecure_channel(addr))

    def one(i, out, ttft):
        t0, n = time.time(), 0
        req = pb.GenerateRequest(prompt=PROMPTS[i % 4] + " " * (i % 3), chat=True, max_tokens=tokens, ignore_eos=True,
                                 sampling=pb.SamplingParams(seed=0), speculation=pb.SpeculationParams(drafters=drafters))
        for m in api.Generate(req, timeout=600):
            if m.tokens and not ttft[i]:
                ttft[i] = time.time() - t0
            n += len(m.tokens)
        out[i] = n

    base = None
    for streams in (1, 4, 16):
        out, ttft = [0] * streams, [0.0] * streams
        t0 = time.time()
        th = [threading.Thread(target=one, args=(i, out, ttft)) for i in range(streams)]
        for t in th:
            t.start()
        for t in th:
            t.join()
        rate = sum(out) / (time.time() - t0)
        base = base or rate
        ttft.sort()
        print("drafters %-5s streams %2d: %6.1f tok/s aggregate (%.2fx of 1 stream), TTFT p50 %.0f ms, max %.0f ms"
              % (drafters, streams, rate, rate / base, 1000 * ttft[len(ttft) // 2], 1000 * ttft[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
