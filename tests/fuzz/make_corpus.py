#!/usr/bin/env python3
"""make_corpus.py — writes a seed corpus for fuzz_gguf (generated, never
committed): small hand-built GGUF files covering every value type, nested
arrays, tensors of several types and a non-default alignment, plus, when
td-mktiny is given, the metadata head of the tiny models (tensor data cut off).

usage: make_corpus.py OUTDIR [--mktiny PATH/TO/td-mktiny]
"""
import os
import struct
import subprocess
import sys
import tempfile

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
       BOOL: "<B", U64: "<Q", I64: "<q", F64: "<d"}
# ggml type id -> (block elements, block bytes)
BLOCKS = {0: (1, 4), 1: (1, 2), 30: (1, 2), 8: (32, 34), 2: (32, 18), 3: (32, 20),
          12: (256, 144), 13: (256, 176), 14: (256, 210)}


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def value(t, v):
    """Encodes a value of type t; arrays are (elem_type, [values])."""
    if t == STRING:
        return gstr(v)
    if t == ARRAY:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(value(et, x) for x in items)
    return struct.pack(FMT[t], v)


def gguf(kvs, tensors=(), version=3, alignment=32):
    """kvs: [(key, type, value)]; tensors: [(name, [ne...], ggml_type)]."""
    out = struct.pack("<IIQQ", 0x46554747, version, len(tensors), len(kvs))
    for key, t, v in kvs:
        out += gstr(key) + struct.pack("<I", t) + value(t, v)
    data, offset = b"", 0
    for i, (name, ne, gt) in enumerate(tensors):
        be, bb = BLOCKS[gt]
        nbytes = ne[0] // be * bb
        for d in ne[1:]:
            nbytes *= d
        out += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        out += struct.pack("<IQ", gt, offset)
        blob = bytes((i * 7 + k) & 0xFF for k in range(nbytes))
        pad = (-nbytes) % alignment
        data += blob + b"\0" * pad
        offset += nbytes + pad
    out += b"\0" * ((-len(out)) % alignment)
    return out + data


def seeds():
    yield "empty", gguf([])
    yield "v2_scalars", gguf([
        ("t.u8", U8, 200), ("t.i8", I8, -5), ("t.u16", U16, 60000), ("t.i16", I16, -3),
        ("t.u32", U32, 7), ("t.i32", I32, -7), ("t.f32", F32, 1.5), ("t.bool", BOOL, 1),
        ("t.str", STRING, "hello"), ("t.u64", U64, 1 << 40), ("t.i64", I64, -(1 << 40)),
        ("t.f64", F64, 2.5)], version=2)
    yield "arrays", gguf([
        ("tokenizer.ggml.tokens", ARRAY, (STRING, ["<|endoftext|>", "a", "", "\u0120the"])),
        ("tokenizer.ggml.token_type", ARRAY, (I32, [3, 1, 1, 1])),
        ("tokenizer.ggml.scores", ARRAY, (F32, [0.0, -1.0, -2.0, -3.0])),
        ("flags", ARRAY, (BOOL, [1, 0, 1])),
        ("empty", ARRAY, (U64, [])),
        ("nested", ARRAY, (ARRAY, [(U32, [1, 2]), (STRING, ["x"]), (ARRAY, [(U8, [])])])),
    ])
    yield "tensors", gguf(
        [("general.architecture", STRING, "llama"), ("llama.block_count", U32, 1)],
        [("token_embd.weight", [8, 2], 0), ("f16", [16], 1), ("bf16", [4, 1, 2], 30),
         ("q8", [32, 2], 8), ("q4_0", [32], 2), ("q4_1", [32], 3), ("q4k", [256], 12),
         ("q5k", [256], 13), ("q6k", [256, 1, 1, 1], 14)])
    yield "align64", gguf([("general.alignment", U32, 64)],
                          [("a", [16], 0), ("b", [32], 8)], alignment=64)
    # tokenizer-only files (what a worker's Describe sends): byte-level BPE
    # with each pre-tokenizer family, for fuzz_tok_export
    byte_sym = [chr(b) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255 else None for b in range(256)]
    n = 0
    for b in range(256):  # GPT-2's byte alphabet: unprintable bytes map to U+0100 and up
        if byte_sym[b] is None:
            byte_sym[b] = chr(256 + n)
            n += 1
    vocab = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<user>"] + byte_sym + ["\u0120t", "he", "\u0120the"]
    types = [3, 3, 3, 4] + [1] * (len(vocab) - 4)
    merges = ["\u0120 t", "h e", "\u0120t he"]
    chat = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    for pre in ("smollm", "gpt-2", "llama-bpe", "qwen2", "default"):
        yield "tok_" + pre, gguf([
            ("general.architecture", STRING, "llama"), ("tokenizer.ggml.model", STRING, "gpt2"),
            ("tokenizer.ggml.pre", STRING, pre), ("tokenizer.ggml.tokens", ARRAY, (STRING, vocab)),
            ("tokenizer.ggml.token_type", ARRAY, (I32, types)), ("tokenizer.ggml.merges", ARRAY, (STRING, merges)),
            ("tokenizer.ggml.bos_token_id", U32, 1), ("tokenizer.ggml.eos_token_id", U32, 2),
            ("tokenizer.ggml.add_bos_token", BOOL, 1 if pre == "llama-bpe" else 0),
            ("tokenizer.chat_template", STRING, chat)])


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    outdir = sys.argv[1]
    mktiny = None
    if len(sys.argv) == 4 and sys.argv[2] == "--mktiny":
        mktiny = sys.argv[3]
    os.makedirs(outdir, exist_ok=True)
    for name, blob in seeds():
        with open(os.path.join(outdir, name + ".gguf"), "wb") as f:
            f.write(blob)
    if mktiny:
        with tempfile.TemporaryDirectory() as tmp:
            for tag, args in (("tiny_llama", []), ("tiny_qwen2", ["--arch", "qwen2", "--tied"])):
                path = os.path.join(tmp, tag + ".gguf")
                subprocess.run([mktiny, path] + args, check=True)
                with open(path, "rb") as f:
                    head = f.read(8192)  # all metadata and tensor infos, data cut off
                with open(os.path.join(outdir, tag + "_head.gguf"), "wb") as f:
                    f.write(head)


if __name__ == "__main__":
    main()
