#!/usr/bin/env bash
# make_corpus.sh NAME CORPUS_DIR [BUILD_DIR] — writes generated seed inputs for
# the fuzz target NAME into CORPUS_DIR (never committed). fuzz_gguf gets the
# hand-built files of make_corpus.py plus tiny-model heads when BUILD_DIR has
# td-mktiny; other targets get no seeds from here.
set -euo pipefail
name=$1
out=$2
build=${3:-build}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
case "$name" in
  fuzz_gguf)
    if [ -x "$build/td-mktiny" ]; then
      python3 "$here/make_corpus.py" "$out" --mktiny "$build/td-mktiny"
    else
      python3 "$here/make_corpus.py" "$out"
    fi
    ;;
  *) ;;
esac
