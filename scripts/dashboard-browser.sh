#!/usr/bin/env bash
# The dashboard in a real browser: installs Debian's chromium when missing and
# playwright-core (pinned, from npm) into a cache directory, starts the real server with
# API keys on MovieLens-sized synthetic data (`funkrec synth`, 943 users x 1,682 items,
# 100,000 ratings) or the ratings file in $DASHBOARD_DATA, trains a model, posts 200
# ratings through the API (for the Ingestion section), and runs
# scripts/dashboard_browser.mjs in headless Chromium. Screenshot:
# target/dashboard/dashboard.png.
#
#   scripts/dashboard-browser.sh
#   DASHBOARD_DATA=../shared/data/ml-100k/u.data scripts/dashboard-browser.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PW_VERSION=1.65.1
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
NODE_DIR=${PW_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/funkrec/playwright-core-$PW_VERSION}
SHOTS=$TARGET/dashboard
export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

if [[ ! -x "$CHROMIUM" ]]; then
  echo "== installing chromium"
  SUDO=; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi
"$CHROMIUM" --version
if [[ ! -f "$NODE_DIR/node_modules/playwright-core/package.json" ]]; then
  echo "== installing playwright-core $PW_VERSION into $NODE_DIR"
  mkdir -p "$NODE_DIR"
  (cd "$NODE_DIR" && echo '{"private":true}' >package.json &&
    npm install --silent --no-audit --no-fund "playwright-core@$PW_VERSION")
fi

# shellcheck source=scripts/live-server.sh
source scripts/live-server.sh

WORK=$(mktemp -d "${TMPDIR:-/tmp}/funkrec-dashboard.XXXXXX")
cleanup() {
  stop_server
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

DATA=${DASHBOARD_DATA:-}
if [[ -z "$DATA" ]]; then
  DATA=$WORK/ratings.tsv
  "$FUNKREC_BIN" synth --users 943 --items 1682 --ratings 100000 --seed 7 --out "$DATA" --quiet
fi
FUNKREC__STORAGE__DATA_DIR=$WORK/data "$FUNKREC_BIN" import "$DATA"

ADMIN_KEY=$(random_key dash-admin)
READ_KEY=$(random_key dash-read)
echo "== starting $FUNKREC_BIN on $BASE"
FUNKREC__SERVER__BIND=127.0.0.1:$PORT \
FUNKREC__STORAGE__DATA_DIR=$WORK/data \
FUNKREC__TRAINING__RETRAIN_INTERVAL_SECS=0 \
FUNKREC__MODEL__FACTORS=${DASHBOARD_FACTORS:-20} \
FUNKREC__MODEL__EPOCHS=${DASHBOARD_EPOCHS:-25} \
FUNKREC__LOG__LEVEL=warn \
FUNKREC__AUTH__KEYS="admin:$ADMIN_KEY,read:$READ_KEY" \
  "$FUNKREC_BIN" serve </dev/null >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
wait_healthy "$WORK/server.log"
auth=(-H "Authorization: Bearer $ADMIN_KEY")
curl -fsS -X POST "${auth[@]}" "$BASE/v1/model/train" >/dev/null
echo "== training the first model"
for _ in $(seq 1 600); do
  if curl -fsS "${auth[@]}" "$BASE/v1/model" | grep -q '"state":"ready"'; then break; fi
  sleep 0.5
done

# a few ratings through the API, so the Ingestion section's per-minute plot shows them
python3 - >"$WORK/batch.json" <<'PY'
import json
print(json.dumps({"ratings": [{"user": f"dash-{u}", "item": str(1 + (u * 7 + i) % 1682), "rating": 1 + (u + i) % 5}
                              for u in range(20) for i in range(10)]}))
PY
curl -fsS -X POST "${auth[@]}" -H 'content-type: application/json' --data @"$WORK/batch.json" \
  "$BASE/v1/ratings" >/dev/null

mkdir -p "$SHOTS"
echo "== headless chromium"
# ES modules resolve packages from the script's own directory upwards
ln -s "$NODE_DIR/node_modules" "$WORK/node_modules"
cp "$ROOT/scripts/dashboard_browser.mjs" "$WORK/"
node "$WORK/dashboard_browser.mjs" "$BASE" "$ADMIN_KEY" "$READ_KEY" "$SHOTS"
if grep -qE '"level":"ERROR"| ERROR ' "$WORK/server.log"; then
  echo "the server logged errors:"; grep -E '"level":"ERROR"| ERROR ' "$WORK/server.log" | head -20
  exit 1
fi
echo "dashboard browser test passed (screenshot: $SHOTS/dashboard.png)"
