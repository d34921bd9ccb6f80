#!/usr/bin/env bash
# make_corpus.sh NAME CORPUS_DIR [BUILD_DIR] — copies the committed seed
# corpus of the fuzz target NAME, tests/fuzz/corpus/NAME/, into CORPUS_DIR
# (CI's bounded runs start from it).
#
# make_corpus.sh --commit [BUILD_DIR] — rewrites every committed corpus from
# the generators below (run it after changing them, and commit the result):
# fuzz_gguf gets the hand-built files of make_corpus.py plus the tiny
# models' heads when BUILD_DIR has td-mktiny (so does fuzz_tok_export: their
# tokenizers); fuzz_tok a few inputs per operation (see fuzz_tok.c for the
# layout: operation and tokenizer byte, flags byte, payload); fuzz_proto a
# few generic protobuf shapes; fuzz_metrics_http a few request heads;
# fuzz_worker, fuzz_coordinator and fuzz_score_input the requests and JSONL
# files of make_corpus.py --target (each target's header says its layout).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
targets="fuzz_gguf fuzz_tok_export fuzz_tok fuzz_proto fuzz_metrics_http fuzz_worker fuzz_coordinator fuzz_score_input"

# gen NAME OUT BUILD: the seeds of NAME, generated into OUT
gen() {
  local name=$1 out=$2 build=$3
  mkdir -p "$out"
  case "$name" in
    fuzz_worker|fuzz_coordinator|fuzz_score_input)
      python3 "$here/make_corpus.py" "$out" --target "$name"
      ;;
    fuzz_gguf|fuzz_tok_export)
      if [ -x "$build/td-mktiny" ]; then
        python3 "$here/make_corpus.py" "$out" --mktiny "$build/td-mktiny"
      else
        python3 "$here/make_corpus.py" "$out"
      fi
      ;;
    fuzz_tok)
      # byte 0: operation (0 encode, 1 decode, 2 chat) + 3 x tokenizer (0..4)
      for tk in 0 1 2 3 4; do
        op0=$(printf '\\%03o' $((0 + 3 * tk))); op1=$(printf '\\%03o' $((1 + 3 * tk))); op2=$(printf '\\%03o' $((2 + 3 * tk)))
        printf "${op0}\\000Hello, world! 12345 the  cat\\n\\nsat <|im_start|>user<|im_end|> <user_tok> \\303\\251t\\303\\251" >"$out/enc-$tk"
        printf "${op0}\\002<|im_start|>system\\nhi<|im_end|><|eot_id|>[INST] x [/INST]" >"$out/enc-special-$tk"
        printf "${op1}\\064\\001\\000\\000\\000\\101\\000\\000\\000\\001\\001\\000\\000\\377\\377\\377\\377" >"$out/dec-$tk"
        printf "${op2}\\010system\\000Be brief.\\000user\\000Hi there\\000assistant\\000Hello!\\000user\\000Bye" >"$out/chat-$tk"
      done
      ;;
    fuzz_proto)
      # generic protobuf shapes (any request type): a string, varints, a
      # nested message, packed repeated varints, a fixed64 and a fixed32
      printf '\012\005hello\020\226\001' >"$out/string-varint"
      printf '\012\004\010\001\020\002\030\377\377\377\377\017' >"$out/nested"
      printf '\042\004\001\002\003\004\051\000\000\000\000\000\000\360\077\065\000\000\200\077' >"$out/packed-fixed"
      ;;
    fuzz_metrics_http)
      printf 'GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n' >"$out/get"
      printf 'POST /metrics?a=b HTTP/1.0\nContent-Length: 2\n\nhi' >"$out/post-lf"
      printf 'GET /metrics HTTP/2.0\r\nX: \001\r\n folded\r\n\r\n' >"$out/odd"
      ;;
    *) ;;
  esac
}

if [ "${1:-}" = "--commit" ]; then
  build=${2:-build}
  for t in $targets; do
    rm -rf "$here/corpus/$t"
    gen "$t" "$here/corpus/$t" "$build"
  done
  exit 0
fi
name=$1
out=$2
mkdir -p "$out"
if [ -d "$here/corpus/$name" ]; then
  cp "$here/corpus/$name/"* "$out/"
fi
