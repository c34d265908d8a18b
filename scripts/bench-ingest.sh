#!/usr/bin/env bash
# Ingestion benchmark (issue #4) on loopback, bounded in time (about ROUNDS × 2 × SECS,
# ~1 min with the defaults), stops by itself and kills the server on exit. Needs wrk,
# curl, python3 and MovieLens 100K (../shared/data/ml-100k).
#
# Builds the release binary, imports u1.base into a throw-away data dir (so the tables are
# not empty), starts the server with training off (no model is needed to ingest), then
# runs wrk (BENCH_THREADS=2 threads, BENCH_SECS=10 s each) BENCH_ROUNDS=3 times over,
# interleaved:
#   batch1000  POST /v1/ratings, BATCH=1000 ratings per body, BENCH_BATCH_CONNECTIONS=8
#   single     POST /v1/ratings, one rating per body, BENCH_CONNECTIONS=64
# (random user of 50,000, random item of 1,682, rating 1..5; most pairs are new rows).
# A 201 is only sent after the transaction holding the ratings committed. Prints the
# medians and whether the targets hold (exit 1 if not).
#
#   scripts/bench-ingest.sh     # BENCH_SECS=10 BENCH_ROUNDS=3 BENCH_CONNECTIONS=64 BATCH=1000
#   BENCH_PG_URL=postgres://postgres@127.0.0.1:5432/postgres scripts/bench-ingest.sh   # on PostgreSQL
source "$(dirname "$0")/bench-common.sh"
export BATCH=${BATCH:-1000}
BCONN=${BENCH_BATCH_CONNECTIONS:-8}

seed_store
export FUNKREC__TRAINING__TRAIN_ON_START=false FUNKREC__TRAINING__RETRAIN_AFTER_RATINGS=0 \
  FUNKREC__TRAINING__RETRAIN_INTERVAL_SECS=0
start_server
echo "== server on $BASE; training off"
machine_note
echo "batches: $BATCH ratings per request, $BCONN connections; single ratings: $CONN connections"
before=$(curl -fsS "$BASE/metrics" | awk '/^funkrec_ratings /{print $2}')
for round in $(seq 1 "$ROUNDS"); do
  run_wrk batch1000 "$round" "$BCONN" post-batch.lua /v1/ratings
  run_wrk single "$round" "$CONN" post-single.lua /v1/ratings
done
after=$(curl -fsS "$BASE/metrics" | awk '/^funkrec_ratings /{print $2}')
echo "ratings in the store: $before before, $after after"
if [[ -n "$PG_DB" ]]; then
  psql -At "$FUNKREC__STORAGE__DATABASE_URL" -c "SELECT 'ratings table + primary key: ' \
    || pg_total_relation_size('ratings') || ' bytes, ' \
    || round(pg_total_relation_size('ratings')::numeric / greatest(count(*), 1), 1) \
    || ' bytes a rating' FROM ratings"
fi
kill -0 "$SERVER_PID" 2>/dev/null || { echo "the server died"; tail -50 "$DATA/server.log"; exit 1; }
python3 "$ROOT/scripts/bench-summary.py" "$RESULTS" ingest "$CONN" "$BATCH"
