#!/bin/sh
# runtime-packages.sh — the Debian/Ubuntu packages that hold the shared
# libraries the given binaries load, one name per line, sorted.
#
#   deploy/docker/runtime-packages.sh [--unowned-ok DIR]... BINARY...
#
# The Dockerfile's build stage runs it on the binaries it built and its
# runtime stage installs what it prints, so the runtime image carries exactly
# the libraries the build linked, under the package names of whichever
# distribution the build ran on (Debian 12, or Ubuntu under NVIDIA's CUDA
# images, where libgrpc29 is libgrpc29t64). It fails, naming the library,
# when one is not found, or when no package holds it and it does not lie
# under a DIR given with --unowned-ok (a toolkit installed by hand, such as
# /usr/local/cuda, whose libraries the runtime base image provides).
set -eu

usage() {
  echo "usage: $0 [--unowned-ok DIR]... BINARY..." >&2
  exit 2
}

unowned_ok=""
while [ $# -gt 0 ]; do
  case "$1" in
    --unowned-ok) [ $# -ge 2 ] || usage; unowned_ok="$unowned_ok $2"; shift 2 ;;
    --help|-h) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    -*) echo "$0: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || usage

# The package holding a file, trying the path as ldd printed it, its real
# path, and both with /usr toggled (merged-/usr systems record either).
owner() {
  for p in "$1" "$(readlink -f "$1")"; do
    for q in "$p" "/usr$p" "${p#/usr}"; do
      pkg=$(dpkg-query -S "$q" 2>/dev/null | head -n 1 | cut -d: -f1) || true
      if [ -n "$pkg" ]; then echo "$pkg"; return 0; fi
    done
  done
  return 1
}

out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
for bin in "$@"; do
  if [ ! -f "$bin" ]; then echo "$0: $bin: no such file" >&2; status=1; continue; fi
  if ! deps=$(ldd "$bin" 2>&1); then
    echo "$0: $bin: not a dynamic executable: $deps" >&2
    status=1
    continue
  fi
  missing=$(printf '%s\n' "$deps" | grep "not found" || true)
  if [ -n "$missing" ]; then
    echo "$0: $bin: libraries not found:" >&2
    printf '%s\n' "$missing" >&2
    status=1
    continue
  fi
  # "libx.so.1 => /path (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)";
  # the vDSO has no file
  for lib in $(printf '%s\n' "$deps" | sed -n 's/.*=> \(\/[^ ]*\) (.*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) (.*/\1/p'); do
    if pkg=$(owner "$lib"); then
      echo "$pkg" >> "$out"
      continue
    fi
    ok=no
    real=$(readlink -f "$lib")
    for d in $unowned_ok; do
      # a toolkit folder is often a link (/usr/local/cuda -> cuda-13.0)
      rd=$(readlink -f "$d" 2>/dev/null || echo "$d")
      for f in "$lib" "$real"; do
        case "$f" in "$d"/*|"$rd"/*) ok=yes ;; esac
      done
    done
    if [ "$ok" = no ]; then
      echo "$0: $bin: no package holds $lib (pass --unowned-ok DIR if the runtime image provides it)" >&2
      status=1
    fi
  done
done
[ "$status" -eq 0 ] || exit "$status"
# the architecture qualifier (libc6:amd64) is dropped: apt installs the native one
sort -u "$out" | sed 's/:[a-z0-9_]*$//'
