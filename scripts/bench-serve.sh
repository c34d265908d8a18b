#!/usr/bin/env bash
# HTTP serving benchmark (issue #4) on loopback, bounded in time (about
# ROUNDS × 3 × SECS + training, ~2 min with the defaults), stops by itself and kills the
# server on exit. Needs wrk, curl, python3 and MovieLens 100K (../shared/data/ml-100k).
#
# Builds the release binary, imports u1.base (80,000 ratings) into a throw-away data dir,
# starts the server with a model that trains in seconds (sgd, 100 factors, 40 epochs, one
# training thread; retraining off so nothing trains during the measurement), waits for the
# first model, then runs wrk (BENCH_THREADS=2 threads, BENCH_CONNECTIONS=64 connections,
# BENCH_SECS=10 s each) BENCH_ROUNDS=3 times over, interleaved:
#   healthz     GET /healthz
#   prediction  GET /v1/users/{u}/predictions/{i}  random known user 1..943, item 1..1682
#   top10       GET /v1/users/{u}/recommendations?n=10  random known user
#   top10_foldin  the same top10 run while a fold-in write mix runs beside it: one more
#               wrk (1 thread, 1 connection, FOLDIN_DELAY_MS=1 ms between requests) posts
#               single ratings of known users (1..943, random item), so a user's next
#               recommendation is folded in (solved again from the store); its own line
#               is `foldin_writes`
# and prints req/s, p50 and p99 per run, the medians, the top10/healthz and
# top10_foldin/healthz throughput ratios per round and whether the targets hold (exit 1
# if not).
#
# On PostgreSQL (BENCH_PG_URL, see bench-common.sh) a second server on the same database
# and data dir serves the same model file with storage.check_user_changes=false, and
# each round also runs
#   top10_nocheck  the same requests against it (no per-request "did this user change"
#                  query: the cost of read-your-writes across replicas, same run)
#
#   scripts/bench-serve.sh      # BENCH_SECS=10 BENCH_ROUNDS=3 BENCH_CONNECTIONS=64 BENCH_THREADS=2
#   BENCH_PG_URL=postgres://postgres@127.0.0.1:5432/postgres scripts/bench-serve.sh
source "$(dirname "$0")/bench-common.sh"

seed_store
export FUNKREC__MODEL__TRAINER=sgd FUNKREC__MODEL__FACTORS=100 FUNKREC__MODEL__EPOCHS=40 \
  FUNKREC__MODEL__THREADS=1 FUNKREC__TRAINING__RETRAIN_AFTER_RATINGS=0 \
  FUNKREC__TRAINING__RETRAIN_INTERVAL_SECS=0
start_server
echo "== server on $BASE; model: sgd, 100 factors, 40 epochs (trains at start)"
wait_for_model
CHECKED=$BASE
NOCHECK=
if [[ -n "$PG_DB" ]]; then
  FUNKREC__STORAGE__CHECK_USER_CHANGES=false start_server "$DATA/server-nocheck.log"
  wait_for_model
  NOCHECK=$BASE
  echo "== second server on $NOCHECK (same model file, storage.check_user_changes=false)"
  BASE=$CHECKED
fi
machine_note
for round in $(seq 1 "$ROUNDS"); do
  run_wrk healthz "$round" "$CONN" healthz.lua /healthz
  run_wrk prediction "$round" "$CONN" predict.lua /
  run_wrk top10 "$round" "$CONN" recs.lua /
  # the write mix runs a little longer than the measured top10 run, on both sides
  (THREADS=1 SECS=$((SECS + 2)) run_wrk foldin_writes "$round" 1 post-known.lua /v1/ratings) &
  writer=$!
  sleep 1
  run_wrk top10_foldin "$round" "$CONN" recs.lua /
  wait "$writer"
  if [[ -n "$NOCHECK" ]]; then
    BASE=$NOCHECK run_wrk top10_nocheck "$round" "$CONN" recs.lua /
  fi
done
for pid in "${SERVER_PIDS[@]}"; do
  kill -0 "$pid" 2>/dev/null || { echo "a server died"; tail -50 "$DATA"/server*.log; exit 1; }
done
python3 "$ROOT/scripts/bench-summary.py" "$RESULTS" serve "$CONN" 0
