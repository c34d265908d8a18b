#!/usr/bin/env bash
# Bounded soak test on loopback: the release binary with a throw-away data dir, seeded with
# MovieLens 100K u1.base (../shared/data/ml-100k, else a synthetic set of the same shape),
# then SOAK_SECS (60) of mixed traffic from examples/loadgen.rs — 90 % reads (predictions,
# recommendations, similar items), 10 % rating writes — with a retrain requested midway that
# must swap the served snapshot. Reports requests, errors (must be 0), p50/p99 and the
# server's resident memory (VmRSS) at the start and end of the traffic, both with the
# worker idle (growth must stay under 10 %). Stops by itself; kills the server on exit.
#
#   scripts/soak.sh                      # SOAK_SECS=60 SOAK_CONCURRENCY=16
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${SOAK_SECS:-60}
CONC=${SOAK_CONCURRENCY:-16}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

echo "== cargo build --release (funkrec, examples/loadgen)"
cargo build --quiet --release --bin funkrec --example loadgen
BIN=$TARGET/release/funkrec
LOADGEN=$TARGET/release/examples/loadgen

DATA=$(mktemp -d "${TMPDIR:-/tmp}/funkrec-soak.XXXXXX")
SERVER_PID=
cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$DATA"
}
trap cleanup EXIT INT TERM

SEED_FILE=${SOAK_DATA:-$ROOT/../shared/data/ml-100k/u1.base}
if [[ ! -f "$SEED_FILE" ]]; then
  echo "== $SEED_FILE not found: generating a synthetic set (943 users, 1682 items, 80 000 ratings)"
  SEED_FILE=$DATA/synthetic.data
  python3 - "$SEED_FILE" <<'PY'
import random, sys
r = random.Random(7)
seen = set()
with open(sys.argv[1], "w") as f:
    while len(seen) < 80000:
        u, i = r.randint(1, 943), r.randint(1, 1682)
        if (u, i) in seen:
            continue
        seen.add((u, i))
        f.write(f"{u}\t{i}\t{r.randint(1, 5)}\t{880000000 + len(seen)}\n")
PY
fi

export FUNKREC__STORAGE__DATA_DIR=$DATA
echo "== seeding from $SEED_FILE"
"$BIN" import "$SEED_FILE" </dev/null 2>&1 | tail -2

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"
echo "== starting the release server on $BASE (default model: sgd, 300 factors, 100 epochs)"
FUNKREC__SERVER__BIND=127.0.0.1:$PORT FUNKREC__LOG__LEVEL=warn \
  "$BIN" serve </dev/null >"$DATA/server.log" 2>&1 &
SERVER_PID=$!
rss() { awk '/^VmRSS/ {print $2}' "/proc/$SERVER_PID/status"; }

# the first model is trained on start (no snapshot yet): wait for it, bounded
for _ in $(seq 1 600); do
  v=$(curl -fsS "$BASE/v1/model" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])' 2>/dev/null || true)
  [[ -n "$v" && "$v" != "None" ]] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited"; cat "$DATA/server.log"; exit 1; }
  sleep 0.5
done
echo "first model: version $v"
RSS_BOOT=$(rss)

# Warm-up (same traffic for SOAK_WARMUP_SECS, with one retrain) so that "start" is the
# steady state: connection page caches filled, allocator arenas of the worker threads and
# the peak of a retrain (old and new snapshot side by side) already reached once.
WARMUP=${SOAK_WARMUP_SECS:-20}
# SOAK_LOADGEN_ARGS: extra loadgen flags for warm-up and run (e.g. "--write-users 20
# --write-items 50": writes re-rate the same 1,000 pairs, so the store stops growing)
# shellcheck disable=SC2086
"$LOADGEN" --base "$BASE" --duration "$WARMUP" --concurrency "$CONC" --train-at 2 --seed 99 ${SOAK_LOADGEN_ARGS:-} >/dev/null 2>&1 || true
# the warm-up may have queued a retrain (its writes): let the worker go idle
wait_idle() {
  for _ in $(seq 1 240); do
    curl -fsS "$BASE/v1/model" | python3 -c 'import json,sys; t=json.load(sys.stdin)["training"]; sys.exit(0 if not t["running"] and not t["queued"] else 1)' && break
    sleep 0.5
  done
}
wait_idle

RSS_START=$(rss)
echo "== $SECS s of mixed traffic, $CONC connections (RSS at start: $RSS_START kB)"
( while kill -0 "$SERVER_PID" 2>/dev/null; do rss >>"$DATA/rss.txt" || true; sleep 5; done ) &
SAMPLER=$!
status=0
timeout --kill-after=30 $((SECS + 200)) "$LOADGEN" --base "$BASE" --duration "$SECS" \
  --concurrency "$CONC" --train-at $((SECS / 3)) ${SOAK_LOADGEN_ARGS:-} >"$DATA/summary.json" || status=$?
RSS_TRAFFIC_END=$(rss)
# "end" in the same state as "start": traffic over and the worker idle (a retrain
# requested by the last writes would otherwise be measured at its peak)
wait_idle
RSS_END=$(rss)
kill "$SAMPLER" 2>/dev/null || true
cat "$DATA/summary.json"
echo "VmRSS every 5 s (kB): $(tr '\n' ' ' <"$DATA/rss.txt")"
kill -0 "$SERVER_PID" 2>/dev/null || { echo "the server died"; tail -50 "$DATA/server.log"; exit 1; }

GROWTH=$(python3 -c "print(round(100.0 * ($RSS_END - $RSS_START) / $RSS_START, 1))")
echo "RSS: after first model $RSS_BOOT kB, start of traffic $RSS_START kB, when traffic stopped $RSS_TRAFFIC_END kB, end (worker idle) $RSS_END kB (growth $GROWTH %)"
if grep -q '"level":"ERROR"\| ERROR ' "$DATA/server.log"; then
  echo "the server logged errors:"; grep '"level":"ERROR"\| ERROR ' "$DATA/server.log" | head; status=1
fi
python3 -c "import sys; sys.exit(0 if $GROWTH < 10 else 1)" || { echo "RSS grew by $GROWTH % (limit 10 %)"; status=1; }
if [[ $status -ne 0 ]]; then echo "soak FAILED"; exit "$status"; fi
echo "soak passed"
