#!/usr/bin/env bash
# test_runtime_packages.sh — deploy/docker/runtime-packages.sh, the list of
# packages the image's runtime stage installs, on this machine's builds.
#
#   tests/integration/test_runtime_packages.sh BUILD_DIR [CUDA_BUILD_DIR]
#
# Checks, for the release build's three binaries, that the list is complete
# by a second route (every library ldd resolves is among the files that
# `dpkg -L` lists for the printed packages), that it names only installed
# packages, and that it names the ones the build is known to link (gRPC,
# protobuf-c, OpenMPI). Then that it refuses what an image could not run: a
# file that is not a dynamic executable, a binary whose library is gone, a
# library no package holds (the CUDA build's NCCL from /usr/local/cuda, here)
# unless --unowned-ok names its folder.
set -uo pipefail
cd "$(dirname "$0")/../.."
SCRIPT=deploy/docker/runtime-packages.sh
BUILD=${1:?usage: $0 BUILD_DIR [CUDA_BUILD_DIR]}
CUDA_BUILD=${2:-}
pass=0
failed=0
ok() { pass=$((pass + 1)); echo "ok: $*"; }
bad() { failed=$((failed + 1)); echo "FAIL: $*"; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

bins=("$BUILD/tandem" "$BUILD/tandem-worker" "$BUILD/tandem-coordinator")
if "$SCRIPT" "${bins[@]}" > "$TMP/pkgs" 2> "$TMP/err"; then
  ok "the release binaries' packages: $(tr '\n' ' ' < "$TMP/pkgs")"
else
  bad "runtime-packages.sh failed on the release binaries: $(cat "$TMP/err")"
fi

# complete: every resolved library is a file of a listed package
: > "$TMP/files"
while read -r p; do dpkg -L "$p" 2>/dev/null | sed 's|.*/||' >> "$TMP/files"; done < "$TMP/pkgs"
for b in "${bins[@]}"; do
  for lib in $(ldd "$b" | sed -n 's/.*=> \(\/[^ ]*\) (.*/\1/p'); do
    real=$(readlink -f "$lib")
    base=$(basename "$real")
    if ! grep -qxF "$base" "$TMP/files"; then
      bad "$b links $lib ($real), which no listed package installs"
    fi
  done
done
[ "$failed" -eq 0 ] && ok "every library the binaries load is installed by a listed package"

# only installed packages, and the ones the build is known to link
while read -r p; do
  if [ "$(dpkg-query -W -f '${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
    bad "listed package $p is not installed here"
  fi
done < "$TMP/pkgs"
for want in libgrpc29 libprotobuf-c1 libopenmpi3 libpcre2-8-0; do
  if grep -qx "$want" "$TMP/pkgs"; then ok "lists $want"; else bad "does not list $want"; fi
done
if [ "$(sort -u "$TMP/pkgs")" = "$(cat "$TMP/pkgs")" ]; then ok "sorted, no repeats"; else bad "not sorted/unique"; fi

# refusals
if "$SCRIPT" README.md > /dev/null 2> "$TMP/err"; then
  bad "a text file was accepted"
elif grep -q "not a dynamic executable" "$TMP/err"; then
  ok "a text file is refused: $(head -n 1 "$TMP/err")"
else
  bad "a text file: unclear error: $(cat "$TMP/err")"
fi
if "$SCRIPT" > /dev/null 2>&1; then bad "no arguments accepted"; else ok "no arguments: usage"; fi
if "$SCRIPT" "$TMP/none" > /dev/null 2> "$TMP/err" || ! grep -q "no such file" "$TMP/err"; then
  bad "a missing binary was not refused by name"
else
  ok "a missing binary is refused"
fi

# a binary whose library has gone
cat > "$TMP/lib.c" <<'EOF'
int td_gone(void) { return 7; }
EOF
cat > "$TMP/main.c" <<'EOF'
int td_gone(void);
int main(void) { return td_gone(); }
EOF
if gcc -shared -fPIC -o "$TMP/libtdgone.so" "$TMP/lib.c" &&
   gcc -o "$TMP/uses-gone" "$TMP/main.c" -L"$TMP" -ltdgone -Wl,-rpath,"$TMP"; then
  if "$SCRIPT" "$TMP/uses-gone" > /dev/null 2> "$TMP/err"; then
    bad "a library no package holds was accepted"
  elif grep -q "no package holds $TMP/libtdgone.so" "$TMP/err"; then
    ok "an unowned library is refused by name"
  else
    bad "unowned library: unclear error: $(cat "$TMP/err")"
  fi
  if "$SCRIPT" --unowned-ok "$TMP" "$TMP/uses-gone" > "$TMP/out" 2> "$TMP/err" && grep -qx libc6 "$TMP/out"; then
    ok "--unowned-ok DIR lets it pass (libc6 still listed)"
  else
    bad "--unowned-ok did not let an unowned library pass: $(cat "$TMP/err")"
  fi
  rm -f "$TMP/libtdgone.so"
  if "$SCRIPT" --unowned-ok "$TMP" "$TMP/uses-gone" > /dev/null 2> "$TMP/err"; then
    bad "a library that is gone was accepted"
  elif grep -q "libtdgone.so => not found" "$TMP/err"; then
    ok "a missing library is refused by name"
  else
    bad "missing library: unclear error: $(cat "$TMP/err")"
  fi
else
  bad "could not build the test binaries"
fi

# the CUDA build links NCCL from the toolkit, which no package holds here
if [ -n "$CUDA_BUILD" ] && [ -x "$CUDA_BUILD/tandem-worker" ]; then
  nccl=$(ldd "$CUDA_BUILD/tandem-worker" | sed -n 's/.*libnccl[^ ]* => \(\/[^ ]*\) (.*/\1/p')
  if [ -z "$nccl" ]; then
    echo "skip: the CUDA build does not link NCCL"
  elif dpkg-query -S "$nccl" > /dev/null 2>&1; then
    echo "skip: $nccl belongs to a package here"
  else
    if "$SCRIPT" "$CUDA_BUILD/tandem-worker" > /dev/null 2> "$TMP/err"; then
      bad "the CUDA build passed with NCCL unowned"
    else
      ok "the CUDA build without --unowned-ok: $(head -n 1 "$TMP/err")"
    fi
    if "$SCRIPT" --unowned-ok /usr/local/cuda "$CUDA_BUILD/tandem-worker" > /dev/null 2> "$TMP/err"; then
      ok "the CUDA build with --unowned-ok /usr/local/cuda (as the Dockerfile runs it)"
    else
      bad "the CUDA build with --unowned-ok /usr/local/cuda: $(cat "$TMP/err")"
    fi
  fi
fi

echo "runtime packages: $pass passed, $failed failed"
[ "$failed" -eq 0 ]
