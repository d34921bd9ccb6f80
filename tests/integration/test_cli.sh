#!/usr/bin/env bash
# test_cli.sh — the tandem CLI as a user meets it: help texts, usage errors,
# corrupt model files (one clear line, non-zero exit, no crash), generation
# on the default model (stdout holds only the text; same seed, same bytes),
# tokenize and info. Usage: test_cli.sh path/to/tandem
set -uo pipefail
TANDEM=${1:?usage: test_cli.sh path/to/tandem}
MODEL=${TANDEM_MODEL:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem/models/SmolLM2-135M-Instruct.Q4_1.gguf}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0; fail=0

check() { # name, then a command that must succeed
  local name=$1; shift
  if "$@"; then pass=$((pass + 1)); echo "ok   $name"; else fail=$((fail + 1)); echo "FAIL $name"; fi
}
exit_is() { # expected-code command...
  local want=$1; shift
  "$@" >"$tmp/out" 2>"$tmp/err"; local got=$?
  [ "$got" -eq "$want" ] || { echo "  exit $got, wanted $want; stderr: $(head -c 300 "$tmp/err")"; return 1; }
}
err_has() { grep -q -- "$1" "$tmp/err" || { echo "  stderr lacks '$1': $(head -c 300 "$tmp/err")"; return 1; }; }
one_line_err() { [ "$(grep -c . "$tmp/err")" -le 2 ] || { echo "  stderr has $(wc -l <"$tmp/err") lines"; return 1; }; }

check "help" exit_is 0 "$TANDEM" --help
check "generate help" exit_is 0 "$TANDEM" generate --help
check "unknown command is a usage error" exit_is 2 "$TANDEM" frobnicate
check "missing prompt is a usage error" exit_is 2 "$TANDEM" generate --model "$MODEL"
check "bad number is a usage error" exit_is 2 "$TANDEM" generate --prompt hi --temperature abc
check "negative max tokens refused" exit_is 2 "$TANDEM" generate --prompt hi --max-tokens -3

check "missing model file" exit_is 1 "$TANDEM" info "$tmp/nope.gguf"
check "missing model names the file" err_has "nope.gguf"
head -c 100000 "$MODEL" >"$tmp/trunc.gguf"
check "truncated model refused" exit_is 1 "$TANDEM" info "$tmp/trunc.gguf"
check "truncated model: short message" one_line_err
head -c 4096 /dev/urandom >"$tmp/random.gguf"
check "random bytes refused" exit_is 1 "$TANDEM" generate --model "$tmp/random.gguf" --prompt hi
printf 'GGUF\x01\x00\x00\x00' >"$tmp/v1.gguf"
check "GGUF v1 refused" exit_is 1 "$TANDEM" info "$tmp/v1.gguf"

check "info" exit_is 0 "$TANDEM" info "$MODEL"
sha=$(sha256sum "$MODEL" | cut -d' ' -f1)
check "info prints the sha256" grep -q "$sha" "$tmp/out"
check "info names the architecture" grep -q "architecture: *llama" "$tmp/out"

check "tokenize" exit_is 0 "$TANDEM" tokenize --model "$MODEL" "Hello, we can use"
check "tokenize ids" grep -qx "19556 28 392 416 722" "$tmp/out"
check "invalid UTF-8 refused" exit_is 1 "$TANDEM" tokenize --model "$MODEL" "$(printf 'ab\xffcd')"

check "greedy chat generation" exit_is 0 "$TANDEM" generate --model "$MODEL" --chat --prompt "Hi! Who are you?" --max-tokens 24 --threads 2
cp "$tmp/out" "$tmp/g1"
check "generation produced text" test -s "$tmp/g1"
check "summary on stderr" err_has "generated"
check "stdout has no summary" bash -c "! grep -q 'tok/s' '$tmp/g1'"
# llama.cpp's greedy answer to the same chat prompt (tests/fixtures/greedy_chat.json)
check "same opening as llama.cpp" grep -q "^Hello! I'm here to help" "$tmp/g1"
"$TANDEM" generate --model "$MODEL" --prompt "Once upon a time" --max-tokens 32 --temperature 0.8 --top-p 0.9 --seed 7 --threads 1 >"$tmp/s1" 2>/dev/null
"$TANDEM" generate --model "$MODEL" --prompt "Once upon a time" --max-tokens 32 --temperature 0.8 --top-p 0.9 --seed 7 --threads 2 >"$tmp/s2" 2>/dev/null
"$TANDEM" generate --model "$MODEL" --prompt "Once upon a time" --max-tokens 32 --temperature 0.8 --top-p 0.9 --seed 8 --threads 2 >"$tmp/s3" 2>/dev/null
check "same seed, same bytes (1 vs 2 threads)" cmp -s "$tmp/s1" "$tmp/s2"
check "other seed, other text" bash -c "! cmp -s '$tmp/s1' '$tmp/s3'"
check "stop string" exit_is 0 "$TANDEM" generate --model "$MODEL" --prompt "1, 2, 3, 4," --max-tokens 40 --stop " 7"
check "stop string not emitted" bash -c "! grep -q ' 7' '$tmp/out'"
check "stop reason reported" err_has "stop-string"

# speculative decoding: the same bytes as plain decoding, greedy and sampled
days="List the days of the week, then list them again in reverse order."
"$TANDEM" generate --model "$MODEL" --chat --prompt "$days" --max-tokens 48 --threads 2 >"$tmp/plain_days" 2>/dev/null
"$TANDEM" generate --model "$MODEL" --chat --prompt "$days" --max-tokens 48 --threads 2 --temperature 0.9 --seed 5 >"$tmp/plain_days_s" 2>/dev/null
for d in lookup ngram recycle layerskip auto; do
  "$TANDEM" generate --model "$MODEL" --chat --prompt "$days" --max-tokens 48 --threads 2 --draft "$d" >"$tmp/d" 2>"$tmp/err"
  check "draft $d: same text as plain decoding" cmp -s "$tmp/d" "$tmp/plain_days"
  check "draft $d: reports speculation" err_has "tokens/pass"
  "$TANDEM" generate --model "$MODEL" --chat --prompt "$days" --max-tokens 48 --threads 2 --temperature 0.9 --seed 5 --draft "$d" >"$tmp/d" 2>/dev/null
  check "draft $d, sampled: same text as plain decoding" cmp -s "$tmp/d" "$tmp/plain_days_s"
done
"$TANDEM" generate --model "$MODEL" --chat --prompt "$days" --max-tokens 48 --threads 2 --draft auto --draft-max 32 --row-cost 0.02 >"$tmp/d" 2>"$tmp/err"
check "wide trees (--row-cost 0.02): same text as plain decoding" cmp -s "$tmp/d" "$tmp/plain_days"
check "row cost outside its range refused" exit_is 2 "$TANDEM" generate --model "$MODEL" --prompt hi --draft lookup --row-cost 0
check "row cost error names the option" err_has "--row-cost"
"$TANDEM" generate --model "$MODEL" --chat --prompt "$days" --max-tokens 48 --threads 2 --numerics fast >"$tmp/fast_plain" 2>/dev/null
"$TANDEM" generate --model "$MODEL" --chat --prompt "$days" --max-tokens 48 --threads 2 --numerics fast --draft auto >"$tmp/fast_auto" 2>/dev/null
check "--numerics fast: speculation gives the same text as fast plain decoding" cmp -s "$tmp/fast_auto" "$tmp/fast_plain"
check "--numerics with an unknown mode refused" exit_is 2 "$TANDEM" generate --model "$MODEL" --prompt hi --numerics exact
check "numerics error names the modes" err_has "'reference', 'fast' or 'llamacpp'"
check "speculation with llamacpp numerics refused" exit_is 2 "$TANDEM" generate --model "$MODEL" --prompt hi --numerics llamacpp --draft lookup
check "the refusal says why" err_has "needs --numerics reference or fast"
"$TANDEM" generate --model "$MODEL" --chat --prompt "$days" --max-tokens 24 --threads 2 --numerics llamacpp >"$tmp/llamacpp_out" 2>"$tmp/err"
check "llamacpp numerics generates text" test -s "$tmp/llamacpp_out"
"$TANDEM" generate --model "$MODEL" --chat --prompt "$days" --max-tokens 48 --threads 2 --numerics reference >"$tmp/ref_plain" 2>/dev/null
"$TANDEM" generate --model "$MODEL" --chat --prompt "$days" --max-tokens 48 --threads 2 --numerics reference --draft auto >"$tmp/ref_auto" 2>/dev/null
check "--numerics reference: speculation gives the same text as reference plain decoding" cmp -s "$tmp/ref_auto" "$tmp/ref_plain"
check "unknown drafter refused" exit_is 1 "$TANDEM" generate --model "$MODEL" --prompt hi --draft magic
check "unknown drafter named" err_has "magic"

# bench spec: identity checked on every turn; malformed question files refused
cat >"$tmp/q.jsonl" <<'Q'
{"category": "writing", "turns": ["List three colours.", "Now in reverse order."]}
{"category": "qa", "turns": ["What is the capital of France?"]}
{"category": "summarization", "turns": ["Repeat this sentence: the cat sat on the mat."]}
Q
check "bench spec runs" exit_is 0 "$TANDEM" bench spec --model "$MODEL" --prompts "$tmp/q.jsonl" --limit 2 --warmup 1 --max-tokens 16 --threads 2 --draft lookup --draft recycle
check "bench spec: every turn identical" grep -q "tokens identical to plain decoding: yes" "$tmp/out"
check "bench spec: per-group rows" grep -q "^qa " "$tmp/out"
check "bench spec: warm-up with nothing left refused" exit_is 1 "$TANDEM" bench spec --model "$MODEL" --prompts "$tmp/q.jsonl" --warmup 1 --max-tokens 4 --draft lookup
check "bench spec: the refusal says why" err_has "none left to warm up on"
printf '%s\n' '{"category": "qa", "turns": ["Hi?"]}' '{"category": 7}' >"$tmp/bad.jsonl"
check "bench spec: malformed question refused" exit_is 1 "$TANDEM" bench spec --model "$MODEL" --prompts "$tmp/bad.jsonl" --max-tokens 4 --draft lookup
check "bench spec: names the line" err_has "bad.jsonl:2"
check "bench spec: negative warm-up is a usage error" exit_is 2 "$TANDEM" bench spec --prompts "$tmp/q.jsonl" --warmup -1
if [ -n "${TD_MKTINY:-}" ] && [ -x "$TD_MKTINY" ]; then
  "$TD_MKTINY" "$tmp/tiny.gguf" >/dev/null
  check "draft model with another vocabulary refused" exit_is 1 "$TANDEM" generate --model "$MODEL" --prompt hi --draft "model:$tmp/tiny.gguf"
  check "vocabulary mismatch explained" err_has "vocabulary differs"
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
