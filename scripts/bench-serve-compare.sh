#!/usr/bin/env bash
# Serving cost of several builds, side by side in one run: one loopback server per
# binary (each on its own copy of MovieLens 100K u1.base, the bench-serve.sh model: sgd,
# 100 factors, 40 epochs), then BENCH_ROUNDS rounds that visit the servers in turn and
# run, for each, BENCH_SECS-second wrk runs (2 threads, 64 connections):
#   healthz, top10, top10_foldin (top10 beside the known-user write mix of bench-serve.sh)
#   and top10_unknownw (top10 beside the same mix for users the snapshot does not know:
#   the writes' own cost, without fold-ins),
# then two runs of one connection (1 wrk thread) with nothing else running:
#   write_alone (single-rating POSTs back to back) and top10_alone.
# Each line also gives the server's CPU time per request (utime + stime of the process
# from /proc, all threads) and the host's steal ticks during the run: on a shared VM
# the CPU per request moves less than the throughput. PERF=1 also records each run
# with `perf record -e cpu-clock -F 1999 -g` of the server into
# $PERF_DIR/perf-ROUND-BINARY-RUN.data (default /tmp; read them with
# `perf report -i FILE --no-children --sort comm,symbol`).
#
#   scripts/bench-serve-compare.sh OLD_BINARY NEW_BINARY [MORE...]
#   scripts/bench-serve-compare.sh BINARY      # one build: where its CPU goes
#   BENCH_SECS=8 BENCH_ROUNDS=3 PERF=
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
W=$ROOT/scripts/wrk
SECS=${BENCH_SECS:-8}
ROUNDS=${BENCH_ROUNDS:-3}
SEED_FILE=${BENCH_DATA:-$ROOT/../shared/data/ml-100k/u1.base}
(($# >= 1)) || { echo "usage: $0 BINARY [BINARY...]" >&2; exit 2; }
for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "this script needs $tool" >&2; exit 2; }
done
[[ -f "$SEED_FILE" ]] || { echo "MovieLens 100K u1.base not found at $SEED_FILE (set BENCH_DATA)" >&2; exit 2; }
export FUNKREC__MODEL__TRAINER=sgd FUNKREC__MODEL__FACTORS=100 FUNKREC__MODEL__EPOCHS=40 \
  FUNKREC__MODEL__THREADS=1 FUNKREC__TRAINING__RETRAIN_AFTER_RATINGS=0 \
  FUNKREC__TRAINING__RETRAIN_INTERVAL_SECS=0 FUNKREC__LOG__LEVEL=warn
PIDS=()
PORTS=()
DIRS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  rm -rf "${DIRS[@]}"
}
trap cleanup EXIT INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
for bin in "$@"; do
  dir=$(mktemp -d "${TMPDIR:-/tmp}/funkrec-cmp.XXXXXX")
  DIRS+=("$dir")
  FUNKREC__STORAGE__DATA_DIR=$dir "$bin" import "$SEED_FILE" </dev/null >/dev/null 2>&1
  port=$(free_port)
  FUNKREC__STORAGE__DATA_DIR=$dir FUNKREC__SERVER__BIND=127.0.0.1:$port \
    "$bin" serve </dev/null >"$dir/server.log" 2>&1 &
  PIDS+=($!)
  PORTS+=("$port")
  v=
  for _ in $(seq 1 1200); do
    v=$(curl -fsS "http://127.0.0.1:$port/v1/model" 2>/dev/null \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])' 2>/dev/null || true)
    [[ -n "$v" && "$v" != "None" ]] && break
    sleep 0.5
  done
  [[ -n "$v" && "$v" != "None" ]] || { echo "no model from $bin"; cat "$dir/server.log"; exit 1; }
done
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
steal() { awk '/^cpu /{print $9}' /proc/stat; }
fields() { sed -E 's/RESULT rps=([0-9.]+) p50_ms=([0-9.]+) p99_ms=([0-9.]+) requests=([0-9]+).*/rps=\1 p50_ms=\2 p99_ms=\3 requests=\4/'; }
# measure LABEL PID WRK_ARGS...: one wrk run with the server's CPU µs per request
measure() {
  local label=$1 pid=$2 c0 s0 out n perf_pid=
  shift 2
  if [[ -n "${PERF:-}" ]]; then
    perf record -e cpu-clock -F 1999 -g -p "$pid" -o "${PERF_DIR:-/tmp}/perf-${label// /-}.data" \
      -- sleep "$SECS" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  c0=$(cpu "$pid"); s0=$(steal)
  out=$(wrk "$@" | grep '^RESULT' | fields)
  [[ -n "$perf_pid" ]] && wait "$perf_pid"
  n=${out##*requests=}
  echo "$label $out cpu_us_per_req=$(python3 -c "print(round(($(cpu "$pid") - $c0) * 1e6 / $(getconf CLK_TCK) / $n, 1))") steal=$(($(steal) - s0))"
}
# beside LABEL PID PORT USERS: top10 while one connection writes ratings of users LO-HI
beside() {
  local label=$1 pid=$2 port=$3 users=$4 w
  (WRITE_USERS=$users wrk -t1 -c1 -d$((SECS + 2))s -s "$W/post-known.lua" "http://127.0.0.1:$port/v1/ratings" \
    | grep '^RESULT' | fields | sed "s/^/$label.writes /") &
  w=$!
  sleep 1
  measure "$label" "$pid" -t2 -c64 -d"${SECS}s" -s "$W/recs.lua" "http://127.0.0.1:$port/"
  wait "$w"
}
for round in $(seq 1 "$ROUNDS"); do
  for i in "${!PORTS[@]}"; do
    port=${PORTS[$i]} pid=${PIDS[$i]} name=$(basename "${@:$((i + 1)):1}")
    measure "$round $name healthz" "$pid" -t2 -c64 -d"${SECS}s" -s "$W/healthz.lua" "http://127.0.0.1:$port/healthz"
    measure "$round $name top10" "$pid" -t2 -c64 -d"${SECS}s" -s "$W/recs.lua" "http://127.0.0.1:$port/"
    beside "$round $name top10_foldin" "$pid" "$port" 1-943
    beside "$round $name top10_unknownw" "$pid" "$port" 100000-900000
    FOLDIN_DELAY_MS=0 WRITE_USERS=1-943 measure "$round $name write_alone" "$pid" -t1 -c1 -d"${SECS}s" \
      -s "$W/post-known.lua" "http://127.0.0.1:$port/v1/ratings"
    measure "$round $name top10_alone" "$pid" -t1 -c1 -d"${SECS}s" -s "$W/recs.lua" "http://127.0.0.1:$port/"
  done
done
