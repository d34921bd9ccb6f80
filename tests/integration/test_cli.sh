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
run_to() { # outfile command...: stdout to outfile, stderr to $tmp/err; fails unless the exit status is 0
  local out=$1; shift
  "$@" >"$out" 2>"$tmp/err"; local got=$?
  [ "$got" -eq 0 ] || { echo "  exit $got: $* ; stderr: $(head -c 300 "$tmp/err")"; return 1; }
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
check "run: s1" run_to "$tmp/s1" "$TANDEM" generate --model "$MODEL" --prompt "Once upon a time" --max-tokens 32 --temperature 0.8 --top-p 0.9 --seed 7 --threads 1
check "run: s2" run_to "$tmp/s2" "$TANDEM" generate --model "$MODEL" --prompt "Once upon a time" --max-tokens 32 --temperature 0.8 --top-p 0.9 --seed 7 --threads 2
check "run: s3" run_to "$tmp/s3" "$TANDEM" generate --model "$MODEL" --prompt "Once upon a time" --max-tokens 32 --temperature 0.8 --top-p 0.9 --seed 8 --threads 2
check "same seed, same bytes (1 vs 2 threads)" cmp -s "$tmp/s1" "$tmp/s2"
check "other seed, other text" bash -c "! cmp -s '$tmp/s1' '$tmp/s3'"
check "stop string" exit_is 0 "$TANDEM" generate --model "$MODEL" --prompt "1, 2, 3, 4," --max-tokens 40 --stop " 7"
check "stop string not emitted" bash -c "! grep -q ' 7' '$tmp/out'"
check "stop reason reported" err_has "stop-string"

# speculative decoding: the same bytes as plain decoding, greedy and sampled
days="List the days of the week, then list them again in reverse order."
check "run: plain_days" run_to "$tmp/plain_days" "$TANDEM" generate --model "$MODEL" --chat --prompt "$days" --max-tokens 48 --threads 2
check "run: plain_days_s" run_to "$tmp/plain_days_s" "$TANDEM" generate --model "$MODEL" --chat --prompt "$days" --max-tokens 48 --threads 2 --temperature 0.9 --seed 5
for d in lookup ngram recycle layerskip auto; do
  check "draft $d runs" run_to "$tmp/d" "$TANDEM" generate --model "$MODEL" --chat --prompt "$days" --max-tokens 48 --threads 2 --draft "$d"
  check "draft $d: same text as plain decoding" cmp -s "$tmp/d" "$tmp/plain_days"
  check "draft $d: reports speculation" err_has "tokens/pass"
  check "draft $d, sampled, runs" run_to "$tmp/d" "$TANDEM" generate --model "$MODEL" --chat --prompt "$days" --max-tokens 48 --threads 2 --temperature 0.9 --seed 5 --draft "$d"
  check "draft $d, sampled: same text as plain decoding" cmp -s "$tmp/d" "$tmp/plain_days_s"
done
check "wide trees run" run_to "$tmp/d" "$TANDEM" generate --model "$MODEL" --chat --prompt "$days" --max-tokens 48 --threads 2 --draft auto --draft-max 32 --row-cost 0.02
check "wide trees (--row-cost 0.02): same text as plain decoding" cmp -s "$tmp/d" "$tmp/plain_days"
check "row cost outside its range refused" exit_is 2 "$TANDEM" generate --model "$MODEL" --prompt hi --draft lookup --row-cost 0
check "row cost error names the option" err_has "--row-cost"
check "run: fast_plain" run_to "$tmp/fast_plain" "$TANDEM" generate --model "$MODEL" --chat --prompt "$days" --max-tokens 48 --threads 2 --numerics fast
check "run: fast_auto" run_to "$tmp/fast_auto" "$TANDEM" generate --model "$MODEL" --chat --prompt "$days" --max-tokens 48 --threads 2 --numerics fast --draft auto
check "--numerics fast: speculation gives the same text as fast plain decoding" cmp -s "$tmp/fast_auto" "$tmp/fast_plain"
check "--numerics with an unknown mode refused" exit_is 2 "$TANDEM" generate --model "$MODEL" --prompt hi --numerics exact
check "numerics error names the modes" err_has "'reference', 'fast', 'llamacpp' or 'tp-invariant'"
check "speculation with llamacpp numerics refused" exit_is 2 "$TANDEM" generate --model "$MODEL" --prompt hi --numerics llamacpp --draft lookup
check "the refusal says why" err_has "needs --numerics reference or fast"
check "--device cuda refuses llamacpp numerics" exit_is 2 "$TANDEM" generate --model "$MODEL" --prompt hi --device cuda --numerics llamacpp
check "the device refusal names what it computes" err_has "computes --numerics reference, fast or tp-invariant"
check "run: llamacpp_out" run_to "$tmp/llamacpp_out" "$TANDEM" generate --model "$MODEL" --chat --prompt "$days" --max-tokens 24 --threads 2 --numerics llamacpp
check "llamacpp numerics generates text" test -s "$tmp/llamacpp_out"
check "run: ref_plain" run_to "$tmp/ref_plain" "$TANDEM" generate --model "$MODEL" --chat --prompt "$days" --max-tokens 48 --threads 2 --numerics reference
check "run: ref_auto" run_to "$tmp/ref_auto" "$TANDEM" generate --model "$MODEL" --chat --prompt "$days" --max-tokens 48 --threads 2 --numerics reference --draft auto
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
# bench engine: the schedule is named or refused; --pin with more threads than CPUs says why
check "bench engine: unknown schedule refused" exit_is 2 "$TANDEM" bench engine --schedule bogus
check "bench engine: the refusal lists the schedules" err_has "phases, jobs or both"
check "bench engine: --pin beyond the CPUs refused" exit_is 1 "$TANDEM" bench engine --model "$MODEL" --threads $(( $(nproc) + 1 )) --pin --repeats 1
check "bench engine: --pin says why" err_has "CPUs to pin them to"
# the planned chunks of the default model on 16 threads share a pass's bytes
# out more evenly than one slice per thread (a figure of shapes alone)
plan_is_even() {
  run_to "$tmp/plan" "$TANDEM" bench engine --model "$MODEL" --threads 16 --repeats 1 || return 1
  awk '/busiest thread/ { gsub(/[x(;:)]/, " "); for (i = 1; i <= NF; i++) if ($i ~ /^[0-9.]+$/) v[n++] = $i }
       END { exit !(n >= 3 && v[1] + 0.05 < v[2]) }' "$tmp/plan" ||
    { echo "  $(grep busiest "$tmp/plan")"; return 1; }
}
check "bench engine: planned chunks even out 16 threads" plan_is_even
# --profile: where the threads' time goes, per step, for both pass sizes;
# --outputs: passes timed by what they bring back
check "bench engine --profile --outputs" run_to "$tmp/prof" "$TANDEM" bench engine --model "$MODEL" --threads 2 --repeats 1 --profile --outputs
check "bench engine --profile: 1-row and 8-row lines" \
  sh -c "grep -q '1-row passes.*gate/up.*outside the job' '$tmp/prof' && grep -q '8-row passes.*attention' '$tmp/prof'"
check "bench engine --outputs: 1 and 16 rows, four kinds each" \
  grep -Eq '1 row: logits [0-9.]+ argmax [0-9.]+ sampled [0-9.]+ scores [0-9.]+  16 rows: logits [0-9.]+ argmax [0-9.]+ sampled [0-9.]+ scores [0-9.]+' "$tmp/prof"
# hostile input found by hand (issue 11): each of these was accepted or misreported before
check "--seed -1 refused" exit_is 2 "$TANDEM" generate --prompt hi --seed -1
check "--seed -1: range message" err_has "expects an integer in \[0, 18446744073709551615\], got '-1'"
check "--seed 2^64 refused" exit_is 2 "$TANDEM" generate --prompt hi --seed 18446744073709551616
check "--seed 10^23 refused" exit_is 2 "$TANDEM" generate --prompt hi --seed 100000000000000000000000
check "--seed 2^64-1 accepted" exit_is 0 "$TANDEM" generate --model "$MODEL" --prompt hi --seed 18446744073709551615 --max-tokens 1 --threads 1
printf 'Tell me a story\0 about a cat' >"$tmp/nul.txt"
check "NUL byte in --prompt-file refused" exit_is 1 "$TANDEM" generate --model "$MODEL" --prompt-file "$tmp/nul.txt" --max-tokens 1
check "NUL byte: names the byte offset" err_has "NUL byte at byte offset 15"
check "--draft \"\" refused" exit_is 2 "$TANDEM" generate --model "$MODEL" --prompt hi --draft ""
check "--draft ,, refused" exit_is 1 "$TANDEM" generate --model "$MODEL" --prompt hi --draft ,,
# a one-token prompt: speculation prefills nothing (the token is the first pass's root)
check "one-token prompt with --draft" exit_is 0 "$TANDEM" generate --model "$MODEL" --prompt hi --draft lookup --max-tokens 2 --threads 1
check "prefill rate counts only prefilled tokens" err_has "prompt 1 tokens, generated 2 tokens, prefill 0.0 tok/s"
check "missing --model file refused" exit_is 1 "$TANDEM" generate --model "$tmp/nonexistent.gguf" --prompt hi
check "missing --model: no 'pass --model' hint" bash -c "! grep -q 'pass --model' '$tmp/err'"
check "missing default model: the setup hint" exit_is 1 env TANDEM_MODEL="$tmp/nonexistent.gguf" "$TANDEM" generate --prompt hi
check "missing default model: hint given" err_has "scripts/setup.sh"

if [ -z "${TD_MKTINY:-}" ] || [ ! -x "$TD_MKTINY" ]; then
  # under CI a missing tool is a broken set-up, not a reason to skip
  if [ "${CI:-}" = "true" ]; then check "td-mktiny available (CI=true)" false; fi
else
  "$TD_MKTINY" "$tmp/evil.gguf" --name $'evil\e[31mRED\nfake: line\xff\xc2\x9b' >/dev/null
  check "info --all on a hostile name" exit_is 0 "$TANDEM" info --all "$tmp/evil.gguf"
  check "info --all: no raw escape byte" bash -c "! grep -q \$'\\e' '$tmp/out'"
  check "info --all: control characters escaped" grep -qF 'general.name = "evil\x1B[31mRED\nfake: line\xFF\u009B"' "$tmp/out"
  check "info --all: no fake line" bash -c "! grep -q '^fake' '$tmp/out'"
  check "tokenize --pieces of an escape sequence" exit_is 0 "$TANDEM" tokenize --model "$tmp/evil.gguf" --pieces $'a\e[31mb'
  check "tokenize --pieces: no raw escape byte" bash -c "! grep -q \$'\\e' '$tmp/out'"
  check "tokenize --pieces: the escape byte escaped" grep -qF '\x1B' "$tmp/out"
  "$TD_MKTINY" "$tmp/ctx0.gguf" --ctx 0 >/dev/null
  check "context_length 0 refused" exit_is 1 "$TANDEM" generate --model "$tmp/ctx0.gguf" --prompt hi
  check "context_length 0: not blamed on --ctx" bash -c "! grep -q -- 'does not fit --ctx' '$tmp/err'"
  check "context_length 0: says where the limit came from" err_has "context_length is 0"
  check "context_length 0 with --ctx runs" exit_is 0 "$TANDEM" generate --model "$tmp/ctx0.gguf" --prompt hi --ctx 64 --max-tokens 2
  "$TD_MKTINY" "$tmp/tiny.gguf" >/dev/null
  check "draft model with another vocabulary refused" exit_is 1 "$TANDEM" generate --model "$MODEL" --prompt hi --draft "model:$tmp/tiny.gguf"
  check "vocabulary mismatch explained" err_has "vocabulary differs"
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
