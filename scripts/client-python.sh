#!/usr/bin/env bash
# Generates a Python client from the live server's /openapi.json with
# openapi-python-client (pinned, from PyPI), as an application developer would, and calls
# every operation through it (scripts/client_python_check.py), checking each typed result.
# Fails when the generator warns (a schema it cannot represent) or any call misbehaves.
#
#   scripts/client-python.sh
#   FUNKREC_BIN=target/release/funkrec scripts/client-python.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

OPC_VERSION=0.29.1
VENV=${OPC_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/funkrec/openapi-python-client-$OPC_VERSION}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

if ! "$VENV/bin/openapi-python-client" --version 2>/dev/null | grep -q "$OPC_VERSION"; then
  echo "== installing openapi-python-client $OPC_VERSION into $VENV"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "openapi-python-client==$OPC_VERSION"
fi

# shellcheck source=scripts/live-server.sh
source scripts/live-server.sh

WORK=$(mktemp -d "${TMPDIR:-/tmp}/funkrec-client.XXXXXX")
cleanup() {
  stop_server
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

API_KEY=$(random_key client-admin)
mkdir -p "$WORK/data"
echo "== starting $FUNKREC_BIN on $BASE"
FUNKREC__SERVER__BIND=127.0.0.1:$PORT \
FUNKREC__STORAGE__DATA_DIR=$WORK/data \
FUNKREC__TRAINING__RETRAIN_INTERVAL_SECS=0 \
FUNKREC__MODEL__FACTORS=8 \
FUNKREC__MODEL__EPOCHS=20 \
FUNKREC__LOG__LEVEL=warn \
FUNKREC__AUTH__KEYS="admin:$API_KEY" \
  "$FUNKREC_BIN" serve </dev/null >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
wait_healthy "$WORK/server.log"
curl -fsS "$BASE/openapi.json" -o "$WORK/openapi.json"

echo "== openapi-python-client generate"
# no formatter hooks; the dashboard's SVG plots are text (the generator knows text/*)
printf 'post_hooks: []\ncontent_type_overrides:\n  image/svg+xml: text/plain\n' >"$WORK/config.yaml"
(cd "$WORK" && "$VENV/bin/openapi-python-client" generate --path openapi.json \
  --config config.yaml --output-path funkrec-client) 2>&1 | tee "$WORK/generate.log"
if grep -qiE 'warning|error' "$WORK/generate.log"; then
  echo "openapi-python-client reported problems with the document"; exit 1
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check "$WORK/funkrec-client"

echo "== calling every operation through the generated client"
"$VENV/bin/python" "$ROOT/scripts/client_python_check.py" "$BASE" "$API_KEY" "$WORK/openapi.json"
if grep -qE '"level":"ERROR"| ERROR ' "$WORK/server.log"; then
  echo "the server logged errors:"; grep -E '"level":"ERROR"| ERROR ' "$WORK/server.log" | head -20
  exit 1
fi
echo "generated Python client passed"
