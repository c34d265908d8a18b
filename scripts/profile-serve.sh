#!/usr/bin/env bash
# Where the server's CPU goes per request (issue 12): the server process's CPU time
# (utime + stime from /proc over each wrk run) divided by the run's requests, on the
# store and server of scripts/bench-serve.sh (MovieLens 100K u1.base, sgd, 100 factors),
# for
#   top10          GET recommendations, 64 connections (BENCH_CONNECTIONS)
#   top10_foldin   the same beside the fold-in write mix (one connection posting single
#                  ratings of known users 1..943, FOLDIN_DELAY_MS=1 ms apart)
#   top10_foldin10 the same with the writes going to users 1..10 only (almost no
#                  fold-ins: what the writes cost by themselves)
#   write_alone    one connection posting single ratings back to back, nothing else
#   top10_alone    one connection reading top-10 back to back, nothing else
# PERF=1 also records each run with `perf record -e cpu-clock -F 1999 -g -p SERVER` into
# $PERF_DIR/perf-NAME.data (default /tmp); read them with
# `perf report -i FILE --no-children --sort comm,symbol`. Needs wrk, curl, python3
# (and linux-perf for PERF=1).
#
#   scripts/profile-serve.sh            # BENCH_SECS=10 per run
#   PERF=1 BENCH_BIN=/tmp/funkrec scripts/profile-serve.sh
source "$(dirname "$0")/bench-common.sh"

seed_store
serve_bench_model
machine_note
TICK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }

# profile NAME CONNECTIONS SCRIPT PATH: one wrk run, then the server's CPU per request.
profile() {
  local name=$1 c0 c1 requests perf_pid=
  if [[ -n "${PERF:-}" ]]; then
    perf record -e cpu-clock -F 1999 -g -p "$SERVER_PID" \
      -o "${PERF_DIR:-/tmp}/perf-$name.data" -- sleep "$SECS" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  c0=$(cpu_ticks)
  run_wrk "$@"
  c1=$(cpu_ticks)
  [[ -n "$perf_pid" ]] && wait "$perf_pid"
  requests=$(awk -v n="$name" '$1 == n {r = $6} END {print r}' "$RESULTS")
  python3 -c "import sys; n, t, r, k = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]); \
print('    %-15s server CPU %.1f us per request' % (n, t / k * 1e6 / max(r, 1)))" \
    "$name" "$((c1 - c0))" "$requests" "$TICK"
}

# with_writes NAME: NAME (top-10, 64 connections) beside the fold-in write mix
with_writes() {
  (THREADS=1 SECS=$((SECS + 2)) run_wrk "${1}_writes" 1 1 post-known.lua /v1/ratings) &
  local writer=$!
  sleep 1
  profile "$1" 1 "$CONN" recs.lua /
  wait "$writer"
}

profile top10 1 "$CONN" recs.lua /
with_writes top10_foldin
WRITE_USERS=1-10 with_writes top10_foldin10
FOLDIN_DELAY_MS=0 THREADS=1 profile write_alone 1 1 post-known.lua /v1/ratings
THREADS=1 profile top10_alone 1 1 recs.lua /
kill -0 "$SERVER_PID" 2>/dev/null || { echo "the server died"; tail -50 "$DATA/server.log"; exit 1; }
