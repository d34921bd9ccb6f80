#!/usr/bin/env python3
"""make_corpus.py — seed inputs for the fuzz targets.

The seeds are committed under tests/fuzz/corpus/<target>/; make_corpus.sh
--commit rewrites them with this script.

fuzz_gguf / fuzz_tok_export (the default): small hand-built GGUF files
covering every value type, nested arrays, tensors of several types and a
non-default alignment, plus, when td-mktiny is given, the metadata head of
the tiny models (tensor data cut off).

--target fuzz_worker | fuzz_coordinator | fuzz_score_input: protobuf
requests for every handler, encoded by the small encoder below (no protobuf
package needed), in each target's input layout (see the targets' header
comments), and JSONL files for the score reader.

usage: make_corpus.py OUTDIR [--mktiny PATH/TO/td-mktiny]
       make_corpus.py OUTDIR --target NAME
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


# ---- protobuf wire format, just enough for requests ----

def varint(v):
    v &= (1 << 64) - 1  # negative int32/int64 take ten bytes, as protobuf writes them
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        out += bytes([b | (0x80 if v else 0)])
        if not v:
            return out


def f_varint(num, v):
    return varint(num << 3) + varint(v)


def f_bytes(num, b):
    b = b.encode() if isinstance(b, str) else b
    return varint(num << 3 | 2) + varint(len(b)) + b


def f_float(num, x):
    return varint(num << 3 | 5) + struct.pack("<f", x)


def f_packed(num, values):
    return f_bytes(num, b"".join(varint(v) for v in values))


def worker_sampling(temperature=0.0, seed=7):
    return (f_float(1, temperature) + f_float(3, 1.0) + f_float(5, 1.0) + f_varint(6, 64)
            + f_varint(7, seed))


# fuzz_worker's methods (the order td_worker_rpc_register and
# td_net_health_add register them in) and its method-byte flags
W_PREFILL, W_VERIFY, W_COMMIT, W_DRAFT, W_SCORE, W_RELEASE, W_STATS, W_DESCRIBE, W_CHECK, W_WATCH = range(10)
PIN, SEQ2, GONE, EXPIRED = 16, 32, 64, 128


def worker_input(role, calls):
    """role 0 verifier, 1 drafter; calls: [(method byte, request bytes)]."""
    out = bytes([role])
    for mb, req in calls:
        out += bytes([mb]) + struct.pack("<H", len(req)) + req
    return out


def seeds_worker():
    prompt = [1, 72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100]  # BOS + bytes: ids 3.. are bytes
    prefill = (f_bytes(1, "r1") + f_packed(3, prompt) + f_bytes(4, worker_sampling())
               + f_varint(5, 8) + f_varint(6, 2) + f_varint(7, 2))
    chain = f_packed(3, [104, 105, 106]) + f_packed(4, [-1, 0, 1])
    tree = f_packed(3, [104, 105, 106, 107, 108]) + f_packed(4, [-1, 0, 0, -1, 3])
    yield "prefill", worker_input(0, [(W_PREFILL | PIN, prefill)])
    yield "prefill_verify", worker_input(0, [(W_PREFILL | PIN, prefill), (W_VERIFY | PIN, chain)])
    yield "prefill_verify_commit", worker_input(0, [
        (W_PREFILL | PIN, prefill), (W_VERIFY | PIN, tree), (W_COMMIT | PIN, f_packed(3, [0])),
        (W_VERIFY | PIN, chain), (W_COMMIT | PIN, b"")])
    yield "verify_carries_commit", worker_input(0, [
        (W_PREFILL | PIN, prefill), (W_VERIFY | PIN, chain),
        (W_VERIFY | PIN, tree + f_varint(5, 1) + f_packed(6, [0, 1]))])
    yield "two_sequences", worker_input(0, [
        (W_PREFILL | PIN, prefill), (W_PREFILL | PIN | SEQ2, prefill), (W_VERIFY | PIN | SEQ2, chain),
        (W_RELEASE | PIN, b""), (W_STATS, b"")])
    # drafts the micro model accepts: its greedy continuation of the prompt
    # is 64 119 242 296 113 91 239 (TD_FUZZ_VERBOSE=1 prints a Verify's
    # samples), so these walks go deep and the commits keep them
    accepted = f_packed(3, [64, 5, 119, 7, 242]) + f_packed(4, [-1, -1, 0, 0, 2])
    yield "accepted_walk", worker_input(0, [
        (W_PREFILL | PIN, prefill), (W_VERIFY | PIN, accepted), (W_COMMIT | PIN, f_packed(3, [0, 2, 4])),
        (W_VERIFY | PIN, f_packed(3, [113, 91]) + f_packed(4, [-1, 0])),
        (W_VERIFY | PIN, f_packed(3, [239, 1]) + f_packed(4, [-1, 0]) + f_varint(5, 1) + f_packed(6, [0, 1])),
        (W_COMMIT | PIN, f_packed(3, [0])), (W_STATS, b"")])
    # a prompt longer than a prefill chunk with max_new_tokens near INT32_MAX
    # (the history once grew by it: gigabytes)
    yield "prefill_huge_max_new", worker_input(0, [(W_PREFILL | PIN, prefill + f_varint(5, 2**31 - 1))])
    yield "prefill_twice", worker_input(0, [(W_PREFILL | PIN, prefill), (W_PREFILL | PIN, prefill)])
    # more rows than one pass holds (the target runs with --max-rows 16)
    wide = f_packed(3, list(range(110, 130))) + f_packed(4, [-1] * 20)
    yield "verify_wide", worker_input(0, [(W_PREFILL | PIN, prefill), (W_VERIFY | PIN, wide)])
    deep = f_packed(3, list(range(110, 125))) + f_packed(4, list(range(-1, 14)))
    yield "verify_deep", worker_input(0, [(W_PREFILL | PIN, prefill), (W_VERIFY | PIN, deep)])
    yield "verify_unopened", worker_input(0, [(W_VERIFY | PIN, chain), (W_COMMIT | PIN, b"")])
    yield "verify_gone", worker_input(0, [(W_PREFILL | PIN, prefill), (W_VERIFY | PIN | GONE, chain)])
    yield "verify_bad_parents", worker_input(0, [
        (W_PREFILL | PIN, prefill), (W_VERIFY | PIN, f_packed(3, [5, 6]) + f_packed(4, [1, -2]))])
    draft = f_packed(3, prompt) + f_varint(4, 6) + f_bytes(5, worker_sampling())
    yield "draft_layerskip", worker_input(0, [(W_DRAFT | PIN, draft), (W_DRAFT | PIN, draft + f_packed(3, [104, 105]))])
    yield "draft_model", worker_input(1, [(W_DRAFT | PIN, draft), (W_DRAFT | PIN, draft + f_packed(3, [104]))])
    yield "draft_sampled", worker_input(1, [(W_DRAFT | PIN, f_packed(3, prompt) + f_varint(4, 4)
                                              + f_bytes(5, worker_sampling(0.8, 3)))])
    yield "drafter_refuses_prefill", worker_input(1, [(W_PREFILL | PIN, prefill)])
    item = f_bytes(1, "a") + f_packed(2, [1, 72, 101]) + f_packed(3, [108, 108, 111])
    bad_item = f_bytes(1, "b") + f_packed(2, []) + f_packed(3, [400])
    yield "score", worker_input(0, [(W_SCORE, f_bytes(1, "s") + f_bytes(2, item) + f_bytes(2, bad_item) + f_varint(3, 3))])
    yield "score_gone", worker_input(0, [(W_SCORE | GONE, f_bytes(2, item))])
    yield "info", worker_input(0, [(W_STATS, b""), (W_DESCRIBE, b""), (W_CHECK, f_bytes(1, "")),
                                   (W_CHECK, f_bytes(1, "tandem.v1.Worker")), (W_CHECK, f_bytes(1, "nope")),
                                   (W_WATCH, f_bytes(1, ""))])
    yield "release_unknown", worker_input(1, [(W_RELEASE, f_varint(2, 99)), (W_DESCRIBE | EXPIRED, b"")])
    yield "malformed", worker_input(0, [(W_PREFILL, b"\x0a\x05ab"), (W_VERIFY, b"\xff\xff\xff")])


# fuzz_coordinator's methods (td_coord_api_register, td_coord_vllm_register,
# then td_net_health_add) and its flags (byte 0's top bits)
(C_GENERATE, C_SCORE, C_TOKENIZE, C_LIST, V_GENERATE, V_ABORT, V_HEALTH, V_MODEL_INFO, V_SERVER_INFO,
 V_LOADS, V_TOKENIZER, C_CHECK, C_WATCH) = range(13)


def coord_input(method, req, flags=0):
    return bytes([method | flags]) + req


def seeds_coordinator():
    sampling = f_float(1, 0.7) + f_varint(2, 40) + f_float(3, 0.9) + f_float(4, 0.05) + f_float(5, 1.1) + f_varint(7, 42)
    spec = f_bytes(1, "lookup,ngram") + f_varint(2, 8) + f_varint(3, 2)
    yield "generate", coord_input(C_GENERATE, f_bytes(2, "Hello, world") + f_varint(6, 16) + f_bytes(7, sampling)
                                  + f_bytes(10, spec) + f_varint(11, 2) + f_bytes(8, "\n\n") + f_bytes(14, "req-1"))
    yield "generate_chat", coord_input(C_GENERATE, f_bytes(2, "Hi") + f_varint(4, 1) + f_bytes(5, "Be brief.")
                                       + f_packed(13, [5, 6]))
    yield "generate_ids", coord_input(C_GENERATE, f_packed(3, [1, 2, 3]) + f_varint(6, 4))
    yield "generate_bad", coord_input(C_GENERATE, f_bytes(2, "x") + f_bytes(7, f_float(3, 2.0)) + f_varint(11, 99))
    yield "generate_bad_utf8", coord_input(C_GENERATE, f_bytes(2, b"\xc3\x28") + f_bytes(8, b""))
    yield "generate_expired", coord_input(C_GENERATE, f_bytes(2, "Hello"), 0x80)
    items = f_bytes(2, f_bytes(1, "a") + f_bytes(2, "The capital of France is") + f_bytes(4, " Paris"))
    items += f_bytes(2, f_bytes(1, "b") + f_packed(3, [1, 2]) + f_packed(5, [3]))
    yield "score", coord_input(C_SCORE, items + f_varint(3, 2) + f_varint(4, 1) + f_bytes(5, "job"))
    yield "score_bad_topk", coord_input(C_SCORE, items + f_varint(3, 50))
    yield "tokenize", coord_input(C_TOKENIZE, f_bytes(2, "<|im_start|>user hi") + f_varint(3, 1) + f_varint(4, 1))
    yield "list_models", coord_input(C_LIST, b"")
    vs = (f_float(1, 0.0) + f_float(2, 0.95) + f_varint(3, 20) + f_varint(8, 32) + f_bytes(10, "STOP")
          + f_varint(22, 2) + f_varint(24, 5))
    yield "vllm_generate_tokens", coord_input(V_GENERATE, f_bytes(1, "v1") + f_bytes(2, f_packed(2, [1, 10, 20]))
                                              + f_bytes(4, vs) + f_varint(5, 1))
    yield "vllm_generate_text", coord_input(V_GENERATE, f_bytes(1, "v2") + f_bytes(3, "Hello") + f_bytes(4, f_float(1, 1.0)))
    yield "vllm_generate_refused", coord_input(V_GENERATE, f_bytes(3, "x") + f_bytes(4, f_float(5, 0.5) + f_varint(15, 2)
                                                                                 + f_bytes(16, "{}")))
    yield "vllm_generate_mm", coord_input(V_GENERATE, f_bytes(3, "x") + f_bytes(7, b""))
    yield "vllm_abort", coord_input(V_ABORT, f_bytes(1, "v1") + f_bytes(1, "v2"))
    for tag, m in (("vllm_health", V_HEALTH), ("vllm_model_info", V_MODEL_INFO), ("vllm_server_info", V_SERVER_INFO),
                   ("vllm_loads", V_LOADS), ("vllm_tokenizer", V_TOKENIZER)):
        yield tag, coord_input(m, b"")
    yield "health_check", coord_input(C_CHECK, f_bytes(1, "tandem.v1.Inference"))
    yield "health_watch", coord_input(C_WATCH, f_bytes(1, ""))
    yield "malformed", coord_input(C_GENERATE, b"\x12\x10abc")


def seeds_score_input():
    """byte 0: shard (see fuzz_score_input.c); then the results file's bytes,
    0xFF, the input file's bytes."""
    def case(shard, done, lines):
        return bytes([shard]) + done + b"\xff" + lines
    ok = (b'{"custom_id": "a1", "prompt": "The capital of France is", "continuation": " Paris"}\n'
          b'{"custom_id": "a2", "prompt_ids": [1, 2, 3], "continuation_ids": [4, 5]}\n')
    yield "plain", case(0, b"", ok)
    yield "resume", case(0, b'{"custom_id": "a1", "logprob_sum": -0.7}\n{"custom_id": "a2", "error": "x"}\n{"cus', ok)
    yield "bad_lines", case(0, b"", b'not json\n{"prompt": "no id"}\n["a"]\n{"custom_id": ""}\n'
                            b'{"custom_id": 5}\n\r\n\n{"custom_id": "a1"}\n{"custom_id": "a1"}\n')
    yield "crlf_no_final_newline", case(0, b"", b'{"custom_id": "x", "prompt": "p"}\r\n{"custom_id": "y", "prompt": "q"}')
    yield "shards", case(1 | 2 << 2, b"", ok + b'{"custom_id": "a3", "prompt": "z", "continuation": "w"}\n')
    yield "odd_ids", case(0, b"", b'{"custom_id": "n", "prompt_ids": [1e300, -1e300, 2.5, "x", null, -1, 2147483647, '
                          b'2147483648], "continuation_ids": []}\n{"custom_id": "m", "prompt": 7, "continuation_ids": {}}\n')
    yield "unicode", case(0, b"", '{"custom_id": "\u00e9\u4e2d", "prompt": "\\ud83d\\ude00 caf\u00e9", "continuation": "\\u0000x"}\n'.encode())
    yield "torn_results_only", case(0, b'{"custom_id": "a1"', b"")
    yield "empty", case(0, b"", b"")
    yield "blank_lines", case(0, b"\n\n\r\n \n\t\n", b"\r\n\n\x00\n \n")
    yield "bom_and_spaces", case(0, b"", b'\xef\xbb\xbf{"custom_id": "bom"}\n   {"custom_id" : "sp" , "prompt":"x"}   \n')
    yield "results_not_json", case(0, b'garbage\n{"custom_id": 3}\n{"error": "no id"}\n[1, 2]\n', ok)
    yield "results_dup_ids", case(0, b'{"custom_id": "a1"}\n{"custom_id": "a1"}\n{"custom_id": "zz"}\n', ok)
    yield "nested_values", case(0, b"", b'{"custom_id": "deep", "prompt": {"a": [1, {"b": null}]}, "prompt_ids": '
                                b'[[1], 2, true], "continuation": ["x"]}\n{"custom_id": "esc\\n\\t\\"q", "prompt": ""}\n')
    yield "line_ids_collide", case(0, b"", b'oops\n{"custom_id": "line-1", "prompt": "p"}\n{"custom_id": "line-4"}\nbad\n')
    yield "shard_last", case(3 | 3 << 2, b'{"custom_id": "s3"}\n', b"".join(
        b'{"custom_id": "s%d", "prompt_ids": [%d], "continuation_ids": [%d]}\n' % (i, i, i + 1) for i in range(9)))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    if len(sys.argv) == 4 and sys.argv[2] == "--target":
        gen = {"fuzz_worker": seeds_worker, "fuzz_coordinator": seeds_coordinator,
               "fuzz_score_input": seeds_score_input}.get(sys.argv[3])
        if not gen:
            sys.exit("make_corpus.py: no seeds for " + sys.argv[3])
        for name, blob in gen():
            with open(os.path.join(outdir, name), "wb") as f:
                f.write(blob)
        return
    mktiny = None
    if len(sys.argv) == 4 and sys.argv[2] == "--mktiny":
        mktiny = sys.argv[3]
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
