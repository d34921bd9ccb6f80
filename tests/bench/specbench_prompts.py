"""The Spec-Bench questions and prompts the lookup benchmarks share.

Every (lines/N)-th line of the Spec-Bench file (the spread `tandem bench spec
--limit N` takes), and its first turn in SmolLM2's ChatML template with the
model's default system message, so that every engine gets the same text.
"""

import json
import os

DEFAULT_MODEL = os.path.expanduser("~/.cache/tandem/models/SmolLM2-135M-Instruct.Q4_1.gguf")
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chatml(question):
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
            f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")


def pick_questions(path, limit):
    lines = [json.loads(l) for l in open(path, encoding="utf-8") if l.strip()]
    stride = len(lines) // limit if 0 < limit < len(lines) else 1
    picked = [q for i, q in enumerate(lines) if i % stride == 0]
    return picked[:limit] if limit > 0 else picked
