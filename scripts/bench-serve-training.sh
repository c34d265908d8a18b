#!/usr/bin/env bash
# Serving while a model trains: top-10 recommendations under wrk (64 connections, as in
# scripts/bench-serve.sh) against a server that is training on all cores, with the
# training threads at the shipped lower priority (training.nice = 10) and at the request
# threads' priority (nice 0), and against an idle server as the baseline. Bounded in
# time (about ROUNDS × 3 × (SECS + 10 s)); needs wrk, curl, python3 and MovieLens 100K.
#
# Each variant starts its own server on u1.base (80,000 ratings; k = 100, model.threads =
# 0, i.e. one training thread per core). The training variants get their first model from
# a 2 s budget (training.first_model_secs) and are then inside the full run that follows
# it (100,000 epochs, far longer than the measurement); the idle one trains 40 epochs at
# start and nothing after. Rounds are interleaved; prints req/s, p50 and p99 per run and
# the medians.
#
#   scripts/bench-serve-training.sh     # BENCH_SECS=10 BENCH_ROUNDS=3 BENCH_CONNECTIONS=64
source "$(dirname "$0")/bench-common.sh"

seed_store
# every server starts from this store, without a model
mkdir "$DATA/seed" && mv "$DATA"/funkrec.db* "$DATA/seed/"
export FUNKREC__MODEL__TRAINER=sgd FUNKREC__MODEL__FACTORS=100 FUNKREC__MODEL__THREADS=0 \
  FUNKREC__MODEL__PATIENCE=0 FUNKREC__TRAINING__RETRAIN_AFTER_RATINGS=0 \
  FUNKREC__TRAINING__RETRAIN_INTERVAL_SECS=0

# variant NAME: starts the server of that variant and waits until it serves a model
# (and, for the training variants, until the full run is under way)
variant() {
  export FUNKREC__STORAGE__DATA_DIR=$DATA/run-$1-$round
  mkdir -p "$FUNKREC__STORAGE__DATA_DIR"
  cp "$DATA"/seed/funkrec.db* "$FUNKREC__STORAGE__DATA_DIR/"
  case $1 in
    idle) FUNKREC__MODEL__EPOCHS=40 FUNKREC__TRAINING__FIRST_MODEL_SECS=0 start_server ;;
    training_nice0) FUNKREC__MODEL__EPOCHS=100000 FUNKREC__TRAINING__FIRST_MODEL_SECS=2 \
      FUNKREC__TRAINING__NICE=0 start_server ;;
    training_nice10) FUNKREC__MODEL__EPOCHS=100000 FUNKREC__TRAINING__FIRST_MODEL_SECS=2 \
      FUNKREC__TRAINING__NICE=10 start_server ;;
  esac
  wait_for_model
  if [[ $1 != idle ]]; then
    for _ in $(seq 1 100); do
      [[ $(curl -fsS "$BASE/v1/model") == *'"running":true'* ]] && return 0
      sleep 0.1
    done
    echo "no training run after the first model"; exit 1
  fi
}

machine_note
for round in $(seq 1 "$ROUNDS"); do
  for name in idle training_nice0 training_nice10; do
    variant "$name"
    run_wrk "$name" "$round" "$CONN" recs.lua /
    if [[ $name != idle && $(curl -fsS "$BASE/v1/model") != *'"running":true'* ]]; then
      echo "the training run ended during the measurement"; exit 1
    fi
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
  done
done
python3 - "$RESULTS" <<'EOF'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]) if l.strip()]
names = list(dict.fromkeys(r[0] for r in rows))
print(f"{'variant':<18}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}  per round (req/s)")
for n in names:
    rs = [r for r in rows if r[0] == n]
    med = lambda i: statistics.median(float(r[i]) for r in rs)
    per = " ".join(str(round(float(r[2]))) for r in rs)
    print(f"{n:<18}{med(2):>10.0f}{med(3):>9.2f}{med(4):>9.2f}  {per}")
EOF
