#!/usr/bin/env bash
# Property-based API testing of the real server against its own OpenAPI document.
#
# Installs schemathesis (pinned, from PyPI) into a venv, starts the funkrec binary on a
# random loopback port with a throw-away data dir, runs `st run` with every check and a
# bounded number of examples per operation, and fails on any 5xx, any response that does
# not match the document, schema-valid requests refused and schema-invalid ones accepted.
# Unattended (no stdin), bounded in time, and it cleans up after itself.
#
#   scripts/schemathesis.sh                 # 50 examples per operation, fixed seed
#   ST_MAX_EXAMPLES=200 ST_SEED=7 scripts/schemathesis.sh
#   FUNKREC_BIN=target/release/funkrec scripts/schemathesis.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ST_VERSION=4.32.5
MAX_EXAMPLES=${ST_MAX_EXAMPLES:-50}
SEED=${ST_SEED:-20261126}
# The venv is cached per version on the machine; built anew when absent.
VENV=${ST_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/funkrec/schemathesis-$ST_VERSION}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
REPORT_DIR=${ST_REPORT_DIR:-$TARGET/schemathesis}

if ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$ST_VERSION"; then
  echo "== installing schemathesis $ST_VERSION into $VENV"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$ST_VERSION"
fi
"$VENV/bin/st" --version

# shellcheck source=scripts/live-server.sh
source scripts/live-server.sh

DATA=$(mktemp -d "${TMPDIR:-/tmp}/funkrec-st.XXXXXX")
cleanup() {
  stop_server
  rm -rf "$DATA"
}
trap cleanup EXIT INT TERM

# An admin key: every /v1 operation is documented as bearer-protected, and schemathesis
# checks that requests without it (or with a wrong one) are refused.
API_KEY=$(random_key st-admin)
echo "== starting $FUNKREC_BIN on $BASE (data in $DATA)"
# Small, quick model; retrains every 200 written ratings so snapshots swap during the run.
FUNKREC__SERVER__BIND=127.0.0.1:$PORT \
FUNKREC__STORAGE__DATA_DIR=$DATA \
FUNKREC__TRAINING__RETRAIN_AFTER_RATINGS=200 \
FUNKREC__TRAINING__RETRAIN_INTERVAL_SECS=0 \
FUNKREC__MODEL__FACTORS=8 \
FUNKREC__MODEL__EPOCHS=20 \
FUNKREC__LOG__LEVEL=warn \
FUNKREC__AUTH__KEYS="admin:$API_KEY" \
  "$FUNKREC_BIN" serve </dev/null >"$DATA/server.log" 2>&1 &
SERVER_PID=$!
wait_healthy "$DATA/server.log"
curl -fsS "$BASE/healthz" >/dev/null

echo "== st run ($MAX_EXAMPLES examples per operation, seed $SEED)"
status=0
CI=true timeout --signal=INT --kill-after=30 600 \
  "$VENV/bin/st" --config-file "$ROOT/scripts/schemathesis.toml" run "$BASE/openapi.json" \
    --checks all \
    --header "Authorization: Bearer $API_KEY" \
    --max-examples "$MAX_EXAMPLES" \
    --seed "$SEED" \
    --workers 2 \
    --request-timeout 10 \
    --no-color \
    --report junit --report-dir "$REPORT_DIR" \
    </dev/null || status=$?

if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  echo "the server died during the run:"; tail -50 "$DATA/server.log"; exit 1
fi
if grep -qE '"level":"ERROR"| ERROR ' "$DATA/server.log"; then
  echo "the server logged errors:"; grep -E '"level":"ERROR"| ERROR ' "$DATA/server.log" | head -20
  status=1
fi
if [[ $status -ne 0 ]]; then echo "schemathesis FAILED ($status)"; exit "$status"; fi
echo "schemathesis passed"
