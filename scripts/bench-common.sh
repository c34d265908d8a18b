# Sourced by scripts/bench-serve.sh and scripts/bench-ingest.sh: tool checks, release
# build, a throw-away data dir seeded with MovieLens 100K u1.base, loopback servers that
# are killed on exit, and wrk runs that append one line per run to $RESULTS.
#
# BENCH_PG_URL=postgres://USER@HOST:PORT/DB (a URL that may create databases) runs the
# same benchmark on PostgreSQL: the store is a database funkrec_bench_<pid> created on
# that server and dropped on exit (needs psql), instead of the SQLite file.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/funkrec
SECS=${BENCH_SECS:-10}
ROUNDS=${BENCH_ROUNDS:-3}
CONN=${BENCH_CONNECTIONS:-64}
THREADS=${BENCH_THREADS:-2}
SEED_FILE=${BENCH_DATA:-$ROOT/../shared/data/ml-100k/u1.base}

for tool in wrk curl python3; do
  if ! command -v "$tool" >/dev/null; then
    echo "this script needs $tool (Debian/Ubuntu: apt-get install -y $tool)" >&2
    exit 2
  fi
done
[[ -f "$SEED_FILE" ]] || { echo "MovieLens 100K u1.base not found at $SEED_FILE (set BENCH_DATA)" >&2; exit 2; }

if [[ -n "${BENCH_BIN:-}" ]]; then
  BIN=$BENCH_BIN   # a binary built before (e.g. to compare two builds); no build here
  echo "== binary: $BIN"
else
  echo "== cargo build --release --bin funkrec"
  cargo build --quiet --release --bin funkrec
fi

PG_DB=
if [[ -n "${BENCH_PG_URL:-}" ]]; then
  command -v psql >/dev/null || { echo "BENCH_PG_URL needs psql" >&2; exit 2; }
  PG_DB=funkrec_bench_$$
fi

DATA=$(mktemp -d "${TMPDIR:-/tmp}/funkrec-bench.XXXXXX")
RESULTS=$DATA/results.tsv
SERVER_PID=
SERVER_PIDS=()
cleanup() {
  local pid
  for pid in "${SERVER_PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${SERVER_PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [[ -n "$PG_DB" ]]; then
    psql -q "$BENCH_PG_URL" -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" || true
  fi
  [[ -n "${BENCH_KEEP:-}" ]] || rm -rf "$DATA"
}
trap cleanup EXIT INT TERM

if [[ -n "$PG_DB" ]]; then
  psql -q -v ON_ERROR_STOP=1 "$BENCH_PG_URL" -c "CREATE DATABASE $PG_DB"
  base=${BENCH_PG_URL%%\?*}
  export FUNKREC__STORAGE__DATABASE_URL=${base%/*}/$PG_DB
  echo "== store: PostgreSQL database $PG_DB (dropped on exit)"
fi
STORE_NAME=$([[ -n "$PG_DB" ]] && echo postgres || echo sqlite)

# seed_store: imports $SEED_FILE into the throw-away data dir.
seed_store() {
  export FUNKREC__STORAGE__DATA_DIR=$DATA
  echo "== importing $SEED_FILE into $DATA"
  "$BIN" import "$SEED_FILE" </dev/null 2>&1 | tail -1
}

# start_server [LOG]: serves on a free loopback port; extra FUNKREC__* settings come from
# the caller's environment. Sets BASE and SERVER_PID and waits until /healthz answers.
# Every server started is stopped on exit.
start_server() {
  local log=${1:-$DATA/server.log}
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  BASE="http://127.0.0.1:$PORT"
  FUNKREC__SERVER__BIND=127.0.0.1:$PORT FUNKREC__LOG__LEVEL=warn \
    "$BIN" serve </dev/null >"$log" 2>&1 &
  SERVER_PID=$!
  SERVER_PIDS+=("$SERVER_PID")
  for _ in $(seq 1 200); do
    curl -fsS "$BASE/healthz" >/dev/null 2>&1 && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited"; cat "$log"; exit 1; }
    sleep 0.1
  done
  echo "server did not answer /healthz within 20 s"; exit 1
}

# wait_for_model: polls /v1/model until a snapshot is served (bounded: 10 minutes).
wait_for_model() {
  local v=
  for _ in $(seq 1 1200); do
    v=$(curl -fsS "$BASE/v1/model" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])' 2>/dev/null || true)
    [[ -n "$v" && "$v" != "None" ]] && { echo "first model: version $v"; return 0; }
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited"; cat "$DATA/server.log"; exit 1; }
    sleep 0.5
  done
  echo "no model within 10 minutes"; exit 1
}

# run_wrk NAME ROUND CONNECTIONS SCRIPT PATH: one timed wrk run; appends
# "NAME ROUND rps p50_ms p99_ms requests errors load1" to $RESULTS.
run_wrk() {
  local name=$1 round=$2 conns=$3 script=$4 path=$5 out line
  out=$(timeout --kill-after=10 $((SECS + 60)) wrk -t"$THREADS" -c"$conns" -d"${SECS}s" \
        --timeout 10s -s "$ROOT/scripts/wrk/$script" "$BASE$path" 2>&1) || { echo "$out"; exit 1; }
  line=$(grep '^RESULT' <<<"$out") || { echo "$out"; exit 1; }
  local load1; load1=$(cut -d' ' -f1 /proc/loadavg)
  python3 - "$name" "$round" "$load1" "$line" >>"$RESULTS" <<'PY'
import sys
name, rnd, load1, line = sys.argv[1:5]
kv = dict(p.split("=") for p in line.split()[1:])
print("\t".join([name, rnd, kv["rps"], kv["p50_ms"], kv["p99_ms"], kv["requests"], kv["errors"], load1]))
PY
  printf '  round %s %-14s %s (load1 %s)\n' "$round" "$name" "${line#RESULT }" "$load1"
}

machine_note() {
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "store: $STORE_NAME; date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "wrk: $THREADS threads, ${SECS} s per run, $ROUNDS rounds interleaved"
}
