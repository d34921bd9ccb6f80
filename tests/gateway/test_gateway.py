#!/usr/bin/env python3
"""test_gateway.py — tandem behind an OpenAI-compatible gateway: the local
cluster of deploy/local/up.sh --gateway (etcd, a verifier, a drafter, the
coordinator, and the Shepherd Model Gateway from PyPI `smg` speaking vLLM's
gRPC engine API to the coordinator), reached by two independent clients:

- the Python `openai` client (PyPI) through the gateway's HTTP API:
  completions and chat completions, greedy, streamed and not, whose text
  and usage token counts equal in-process `tandem generate` (--chat for the
  chat case) on the same model;
- the Python stubs shipped in PyPI `smg-grpc-proto`, straight to the
  coordinator: HealthCheck, GetModelInfo, GetTokenizer (the zip's
  tokenizer.json encodes tests/fixtures/tokenize.json like llama.cpp, via
  PyPI `tokenizers`), Generate from token ids with seeded sampling (the
  same tokens as `tandem generate --seed`, with speculation on), Abort,
  and refusals that name the unsupported field.

Runs under the gateway venv's python (scripts/setup.sh makes it: grpcio
and protobuf newer than Debian's, which smg-grpc-proto needs).
Usage: VENV/bin/python test_gateway.py BUILD_DIR
Every process is started by up.sh and stopped by PID by down.sh.
"""
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import unittest
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BUILD = None

import grpc  # noqa: E402  (the venv's)
import openai  # noqa: E402
from smg_grpc_proto.generated import common_pb2 as cpb  # noqa: E402
from smg_grpc_proto.generated import vllm_engine_pb2 as vpb  # noqa: E402
from smg_grpc_proto.generated import vllm_engine_pb2_grpc as vpbg  # noqa: E402

COMPLETION_PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]
CHAT_PROMPTS = ["What is 2+2?", "Name three colors."]


def slurp(path):
    with open(path) as f:
        return f.read()


def tandem_generate(*args):
    """Text and (prompt, generated) token counts of in-process generation."""
    r = subprocess.run([os.path.join(BUILD, "tandem"), "generate"] + list(args), capture_output=True)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    m = re.search(r"prompt (\d+) tokens, generated (\d+) tokens", r.stderr.decode())
    assert m, r.stderr.decode()
    return r.stdout.decode().rstrip("\n"), int(m.group(1)), int(m.group(2))


class GatewayTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="tandem-gw-")
        cls.env = dict(os.environ, TANDEM_LOCAL_DIR=cls.dir, TANDEM_BUILD=BUILD,
                       TANDEM_GATEWAY_VENV=os.path.dirname(os.path.dirname(sys.executable)), TANDEM_LEASE_TTL="3")
        r = subprocess.run([os.path.join(ROOT, "deploy", "local", "up.sh"), "--gateway"], env=cls.env,
                           capture_output=True, timeout=300)
        if r.returncode != 0:
            cls.tearDownClass()
            raise RuntimeError("up.sh --gateway failed: " + r.stderr.decode(errors="replace")[-3000:])
        cls.coord = slurp(os.path.join(cls.dir, "address")).strip()
        cls.gateway = slurp(os.path.join(cls.dir, "gateway-address")).strip()
        cls.oai = openai.OpenAI(base_url="http://%s/v1" % cls.gateway, api_key="unused", timeout=120, max_retries=0)
        cls.model = cls.oai.models.list().data[0].id
        cls.ch = grpc.insecure_channel(cls.coord)
        cls.engine = vpbg.VllmEngineStub(cls.ch)

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "ch", None):
            cls.ch.close()
        subprocess.run([os.path.join(ROOT, "deploy", "local", "down.sh")], env=cls.env, capture_output=True)
        shutil.rmtree(cls.dir, ignore_errors=True)

    # ---- through the gateway, with the openai client ----

    def test_completions_equal_tandem_generate(self):
        for prompt in COMPLETION_PROMPTS:
            want, n_prompt, n_gen = tandem_generate("--prompt", prompt, "--max-tokens", "40")
            r = self.oai.completions.create(model=self.model, prompt=prompt, max_tokens=40, temperature=0)
            self.assertEqual(r.choices[0].text, want, prompt)
            self.assertEqual((r.usage.prompt_tokens, r.usage.completion_tokens), (n_prompt, n_gen), prompt)
            chunks = self.oai.completions.create(model=self.model, prompt=prompt, max_tokens=40, temperature=0,
                                                 stream=True, stream_options={"include_usage": True})
            text, usage = "", None
            for c in chunks:
                if c.choices:
                    text += c.choices[0].text
                usage = c.usage or usage
            self.assertEqual(text, want, prompt + " (stream)")
            self.assertEqual((usage.prompt_tokens, usage.completion_tokens), (n_prompt, n_gen))

    def test_chat_completions_equal_tandem_generate_chat(self):
        for prompt in CHAT_PROMPTS:
            want, n_prompt, n_gen = tandem_generate("--chat", "--prompt", prompt, "--max-tokens", "48")
            msgs = [{"role": "user", "content": prompt}]
            r = self.oai.chat.completions.create(model=self.model, messages=msgs, max_tokens=48, temperature=0)
            self.assertEqual(r.choices[0].message.content, want, prompt)
            self.assertEqual((r.usage.prompt_tokens, r.usage.completion_tokens), (n_prompt, n_gen), prompt)
            chunks = self.oai.chat.completions.create(model=self.model, messages=msgs, max_tokens=48, temperature=0,
                                                      stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            self.assertEqual(text, want, prompt + " (stream)")

    def test_unsupported_parameters_refused_through_gateway(self):
        for kw, field in (({"n": 2}, "sampling_params.n"), ({"frequency_penalty": 0.5}, "frequency_penalty"),
                          ({"presence_penalty": 0.3}, "presence_penalty")):
            with self.assertRaises(openai.BadRequestError) as e:
                self.oai.completions.create(model=self.model, prompt="Hello", max_tokens=4, temperature=0, **kw)
            self.assertIn(field, str(e.exception))

    # ---- straight to the coordinator, with smg-grpc-proto's stubs ----

    def test_health_and_model_info(self):
        h = self.engine.HealthCheck(vpb.HealthCheckRequest(), timeout=10)
        self.assertTrue(h.healthy, h.message)
        info = self.engine.GetModelInfo(vpb.GetModelInfoRequest(), timeout=10)
        self.assertEqual(info.vocab_size, 49152)
        self.assertTrue(info.is_generation)
        self.assertGreater(info.max_context_length, 0)
        self.assertEqual(info.served_model_name, self.model)
        self.assertIn(2, list(info.eos_token_ids))  # <|im_end|> ends a turn

    def test_tokenizer_zip_encodes_like_llama_cpp(self):
        data, sha = b"", None
        for chunk in self.engine.GetTokenizer(cpb.GetTokenizerRequest(), timeout=60):
            data += chunk.data
            sha = chunk.sha256 or sha
        self.assertEqual(hashlib.sha256(data).hexdigest(), sha)
        out = tempfile.mkdtemp(prefix="tandem-tok-")
        zipfile.ZipFile(io.BytesIO(data)).extractall(out)
        r = subprocess.run([sys.executable, os.path.join(HERE, "check_tokenizer_json.py"), out,
                            os.path.join(ROOT, "tests", "fixtures", "tokenize.json")], capture_output=True)
        self.assertEqual(r.returncode, 0, r.stdout.decode() + r.stderr.decode())

    def tokenize(self, text):
        r = subprocess.run([os.path.join(BUILD, "tandem"), "tokenize", text], capture_output=True, check=True)
        return [int(x) for x in r.stdout.split()]

    def detokenize(self, ids):
        from tokenizers import Tokenizer
        if not hasattr(self, "_tok"):
            out = tempfile.mkdtemp(prefix="tandem-tok-")
            subprocess.run([os.path.join(BUILD, "tandem"), "tokenize", "--export-hf", out], check=True,
                           capture_output=True)
            GatewayTest._tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
        return self._tok.decode(ids, skip_special_tokens=False)

    def test_seeded_generate_from_ids_equals_tandem_generate(self):
        prompt = "In a land far away there lived"
        want, _, n_gen = tandem_generate("--prompt", prompt, "--max-tokens", "48", "--temperature", "0.8",
                                         "--seed", "1234", "--ignore-eos")
        req = vpb.GenerateRequest(
            request_id="seeded-1", tokenized=vpb.TokenizedInput(input_ids=self.tokenize(prompt)), stream=True,
            sampling_params=vpb.SamplingParams(temperature=0.8, top_p=1.0, repetition_penalty=1.0, max_tokens=48,
                                               seed=1234, ignore_eos=True, n=1))
        streamed, complete = [], None
        for m in self.engine.Generate(req, timeout=120):
            if m.HasField("chunk"):
                streamed.extend(m.chunk.token_ids)
            else:
                complete = m.complete
        self.assertEqual(list(complete.output_ids), streamed)
        self.assertEqual(len(streamed), n_gen)
        self.assertEqual(complete.finish_reason, "length")
        self.assertEqual(self.detokenize(streamed), want)

    def test_chat_turns_reuse_the_cache_and_keep_tokens(self):
        # three turns of one conversation, each prompt the whole conversation
        # so far (as a gateway sends it): the verifier reuses the cached
        # earlier turns, and the third answer equals a cold in-process run
        text = ""
        for turn, question in enumerate(["Tell me about cats.", "And dogs?", "Which is better?"]):
            text += "<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n" % question
            req = vpb.GenerateRequest(request_id="turn-%d" % turn, tokenized=vpb.TokenizedInput(input_ids=self.tokenize(text)),
                                      sampling_params=vpb.SamplingParams(temperature=0, max_tokens=32, n=1))
            out = [m.complete for m in self.engine.Generate(req, timeout=120) if m.HasField("complete")][0]
            if turn > 0:  # the earlier turns came from the verifier's cache
                self.assertGreater(out.cached_tokens, 20)
            ids = list(out.output_ids)
            if out.finish_reason == "stop" and ids and ids[-1] == 2:  # the turn's own <|im_end|>
                ids.pop()
            answer = self.detokenize(ids)
            if turn == 2:
                with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
                    f.write(text)
                want, _, _ = tandem_generate("--prompt-file", f.name, "--max-tokens", "32")
                os.unlink(f.name)
                self.assertEqual(answer, want)
            text += answer + "<|im_end|>\n"
        log = slurp(os.path.join(self.dir, "logs", "verifier.log"))
        reused = [int(n) for n in re.findall(r"\((\d+) reused from the cache\)", log)]
        self.assertGreaterEqual(sum(1 for n in reused if n > 20), 2, reused)

    def test_abort_stops_a_running_request(self):
        req = vpb.GenerateRequest(
            request_id="to-abort", tokenized=vpb.TokenizedInput(input_ids=self.tokenize("Count to a thousand:")),
            stream=True, sampling_params=vpb.SamplingParams(temperature=0, max_tokens=2000, ignore_eos=True))
        call = self.engine.Generate(req, timeout=120)
        first = next(call)
        self.assertTrue(first.HasField("chunk"))
        threading.Thread(target=lambda: self.engine.Abort(vpb.AbortRequest(request_ids=["to-abort"]), timeout=10)).start()
        last = None
        for m in call:
            last = m
        self.assertTrue(last.HasField("complete"))
        self.assertEqual(last.complete.finish_reason, "abort")
        self.assertLess(len(last.complete.output_ids), 2000)

    def test_refusals_name_the_field(self):
        ids = vpb.TokenizedInput(input_ids=[19556])
        cases = [
            (vpb.GenerateRequest(tokenized=ids, sampling_params=vpb.SamplingParams(max_tokens=4, logit_bias={5: 10.0})),
             "logit_bias"),
            (vpb.GenerateRequest(tokenized=ids, sampling_params=vpb.SamplingParams(max_tokens=4, regex="a+")),
             "structured output"),
            (vpb.GenerateRequest(tokenized=ids, sampling_params=vpb.SamplingParams(max_tokens=4),
                                 mm_inputs=vpb.MultimodalInputs(mm_hashes=["x"])), "mm_inputs"),
            (vpb.GenerateRequest(tokenized=vpb.TokenizedInput(input_ids=[49152]),
                                 sampling_params=vpb.SamplingParams(max_tokens=4)), "input_ids[0]"),
            (vpb.GenerateRequest(tokenized=vpb.TokenizedInput(), sampling_params=vpb.SamplingParams(max_tokens=4)),
             "input"),
            (vpb.GenerateRequest(tokenized=ids, sampling_params=vpb.SamplingParams(max_tokens=4, top_p=1.5)), "top_p"),
            (vpb.GenerateRequest(tokenized=ids, sampling_params=vpb.SamplingParams(max_tokens=10 ** 8)), "max_tokens"),
        ]
        for req, field in cases:
            with self.assertRaises(grpc.RpcError) as e:
                list(self.engine.Generate(req, timeout=30))
            self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT, e.exception.details())
            self.assertIn(field, e.exception.details())
        # the calls it does not serve say so
        with self.assertRaises(grpc.RpcError) as e:
            self.engine.Embed(vpb.EmbedRequest(tokenized=ids), timeout=10)
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNIMPLEMENTED)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    BUILD = os.path.abspath(sys.argv[1])
    unittest.main(argv=[sys.argv[0]] + sys.argv[2:], verbosity=2)
