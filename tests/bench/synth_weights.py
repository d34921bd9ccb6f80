#!/usr/bin/env python3
"""synth_weights.py: a GGUF with a real model's metadata and tensor shapes
and synthetic weights, for timing on machines a model file cannot travel to.

  synth_weights.py header MODEL.gguf HEADER.bin   the bytes before the tensor data
  synth_weights.py fill HEADER.bin OUT.gguf [SEED] header + synthetic tensor data

The header keeps the tokenizer and hyper-parameters, so tandem loads OUT.gguf
like the original; kernels cost the same on any weights of the same types, so
speed figures carry over, but the text it generates is meaningless. Weights are
valid blocks of moderate scale (no NaN, no subnormal scales). Supported types:
F32, F16, Q4_0, Q4_1, Q8_0.
"""
import struct
import sys

import numpy as np

# ggml type id -> (elements per block, bytes per block)
BLOCKS = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 8: (32, 34)}
VALUE_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, fmt):
        v = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return v[0] if len(v) == 1 else v

    def string(self):
        n = self.take("Q")
        s = self.data[self.pos:self.pos + n]
        self.pos += n
        return s.decode("utf-8", "replace")

    def skip_value(self, vtype):
        if vtype == 8:
            self.string()
        elif vtype == 9:
            etype, n = self.take("I"), self.take("Q")
            if etype in VALUE_SIZES:
                self.pos += VALUE_SIZES[etype] * n
            else:
                for _ in range(n):
                    self.skip_value(etype)
        else:
            self.pos += VALUE_SIZES[vtype]


def parse(data):
    """Returns (tensors [(name, n_elements, type, offset)], data_start)."""
    r = Reader(data)
    magic, version = r.take("4s"), r.take("I")
    if magic != b"GGUF" or version not in (2, 3):
        sys.exit("not a GGUF v2/v3 file")
    n_tensors, n_kv = r.take("Q"), r.take("Q")
    alignment = 32
    for _ in range(n_kv):
        key, vtype = r.string(), r.take("I")
        if key == "general.alignment" and vtype == 4:
            alignment = r.take("I")
        else:
            r.skip_value(vtype)
    tensors = []
    for _ in range(n_tensors):
        name, n_dims = r.string(), r.take("I")
        n = 1
        for _ in range(n_dims):
            n *= r.take("Q")
        ttype, offset = r.take("I"), r.take("Q")
        tensors.append((name, n, ttype, offset))
    start = (r.pos + alignment - 1) // alignment * alignment
    return tensors, start


def blocks(rng, ttype, n):
    per, size = BLOCKS[ttype]
    nb = n // per
    if ttype == 0:
        return np.ones(n, np.float32).tobytes()  # norms: identity scale
    if ttype == 1:
        return rng.normal(0, 0.02, n).astype(np.float16).tobytes()
    out = np.empty((nb, size), np.uint8)
    d = rng.uniform(0.002, 0.01, nb).astype(np.float16).view(np.uint8).reshape(nb, 2)
    out[:, 0:2] = d
    if ttype == 3:  # Q4_1: d, m, 16 bytes of nibbles
        out[:, 2:4] = (-8 * d.view(np.float16)).astype(np.float16).view(np.uint8).reshape(nb, 2)
        out[:, 4:] = rng.integers(0, 256, (nb, 16), dtype=np.uint8)
    elif ttype == 2:  # Q4_0: d, 16 bytes of nibbles
        out[:, 2:] = rng.integers(0, 256, (nb, 16), dtype=np.uint8)
    else:  # Q8_0: d, 32 int8
        out[:, 2:] = rng.integers(-127, 128, (nb, 32), dtype=np.int8).view(np.uint8)
    return out.tobytes()


def main():
    if len(sys.argv) < 4 or sys.argv[1] not in ("header", "fill"):
        sys.exit(__doc__)
    with open(sys.argv[2], "rb") as f:
        data = f.read() if sys.argv[1] == "fill" else f.read(64 << 20)
    tensors, start = parse(data)
    if sys.argv[1] == "header":
        with open(sys.argv[3], "wb") as f:
            f.write(data[:start])
        print(f"{len(tensors)} tensors, header {start} bytes")
        return
    rng = np.random.default_rng(int(sys.argv[4]) if len(sys.argv) > 4 else 1)
    with open(sys.argv[3], "wb") as f:
        f.write(data[:start])
        pos = 0
        for name, n, ttype, offset in sorted(tensors, key=lambda t: t[3]):
            if ttype not in BLOCKS:
                sys.exit(f"{name}: type {ttype} not supported here")
            f.write(b"\0" * (offset - pos))
            chunk = blocks(rng, ttype, n)
            f.write(chunk)
            pos = offset + len(chunk)
    print(f"{len(tensors)} tensors, {start + pos} bytes")


if __name__ == "__main__":
    main()
