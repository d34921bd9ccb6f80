#!/usr/bin/env bash
# run.sh — the Helm chart's checks without a cluster (check_chart.py: Helm's
# own engine renders and lints helm/tandem, manifests validated against the
# Kubernetes schemas, the schema refuses bad values), then, where the build
# and Debian's etcd are present, the rendered pods' command lines started
# on loopback (test_chart_cluster.py). Makes its own venv under build/ from
# tests/helm/requirements.txt (PyPI); needs python3-venv.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${TD_HELM_VENV:-build/helm-venv}
REQ=tests/helm/requirements.txt
if [ ! -x "$VENV/bin/python" ] || ! cmp -s "$REQ" "$VENV/requirements.txt"; then
  echo "[helm] making $VENV (PyPI: $(grep -v '^#' "$REQ" | tr '\n' ' '))"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ"
  cp "$REQ" "$VENV/requirements.txt"
fi
DUMP=$(mktemp -d)
trap 'rm -rf "$DUMP"' EXIT
"$VENV/bin/python" tests/helm/check_chart.py --dump "$DUMP"
BUILD=${TD_BUILD:-build}
if [ -x "$BUILD/tandem-coordinator" ] && [ -x "$BUILD/tandem-worker" ] && command -v etcd >/dev/null; then
  "$VENV/bin/python" tests/helm/test_chart_cluster.py "$BUILD"
else
  echo "[helm] skipped test_chart_cluster.py: needs $BUILD/tandem-* and etcd"
fi
