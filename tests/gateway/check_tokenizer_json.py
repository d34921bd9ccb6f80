#!/usr/bin/env python3
"""check_tokenizer_json.py — the tokenizer.json that tandem exports (`tandem
tokenize --export-hf`, and GetTokenizer of the coordinator's vLLM engine
API) loaded by PyPI `tokenizers`, the library a gateway tokenizes with,
against the tokenizer fixtures of tests/fixtures/tokenize.json (made by
llama.cpp, see make_fixtures.py there).

Every case with parse_special set is compared, and every case without it
whose text holds no special-token text (`tokenizers` always matches added
tokens, as tandem does with parse_special). At least 40 cases must be
compared and all must agree.

Usage: python check_tokenizer_json.py DIR_WITH_TOKENIZER_JSON FIXTURES_JSON
(needs `tokenizers`: run it with the gateway venv's python)
"""
import json
import os
import sys

from tokenizers import Tokenizer


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    tok = Tokenizer.from_file(os.path.join(sys.argv[1], "tokenizer.json"))
    cfg = json.load(open(os.path.join(sys.argv[1], "tokenizer_config.json")))
    fx = json.load(open(sys.argv[2]))
    specials = [t.content for t in tok.get_added_tokens_decoder().values()]
    compared = bad = 0
    for c in fx["cases"]:
        if not c["parse_special"] and any(s in c["text"] for s in specials):
            continue
        got = tok.encode(c["text"], add_special_tokens=fx["add_bos"]).ids
        compared += 1
        if got != c["ids"]:
            bad += 1
            print("MISMATCH %r: tokenizers %s, llama.cpp %s" % (c["text"][:60], got[:12], c["ids"][:12]))
    assert tok.get_vocab_size() == fx["n_vocab"], (tok.get_vocab_size(), fx["n_vocab"])
    assert "chat_template" in cfg and "<|im_start|>" in cfg["chat_template"], "tokenizer_config.json lacks the chat template"
    print("%d passed, %d failed" % (compared - bad, bad))
    if compared < 40:
        print("only %d cases compared (want >= 40)" % compared)
        return 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
