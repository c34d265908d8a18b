#!/usr/bin/env bash
# Time from `funkrec serve` to its first published model on a prepared store, with the
# shipped defaults plus any FUNKREC__* overrides given in the environment.
#
#   scripts/bench-first-model.sh STORE_DIR [LABEL]
#
# STORE_DIR holds funkrec.db (e.g. from `funkrec import`); it is copied to a scratch
# directory first, so every run starts from the same store. A PostgreSQL store:
# FUNKREC__STORAGE__DATABASE_URL=postgres://... (then nothing is copied: STORE_DIR may
# be any directory and the database is used as it is; start each run from a fresh one).
# Prints one JSON line: seconds to the first model, the training report
# (train_seconds, holdout_rmse, best_epoch, stopped_early, epochs run), the process's
# peak RSS, and the overrides; BENCH_MODEL_JSON=FILE also keeps GET /v1/model's answer
# (with the per-epoch validation curve). Run it under `flock /tmp/bench.lock` on a shared machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
STORE=${1:?usage: scripts/bench-first-model.sh STORE_DIR [LABEL]}
LABEL=${2:-run}
BIN=${BENCH_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/funkrec}
PORT=${BENCH_PORT:-18091}
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/funkrec-first-model.XXXXXX")
PID=
cleanup() {
  [[ -n "$PID" ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$SCRATCH"
}
trap cleanup EXIT

[[ -x "$BIN" ]] || { echo "no release binary at $BIN (cargo build --release)" >&2; exit 2; }
if [[ -z "${FUNKREC__STORAGE__DATABASE_URL:-}" ]]; then
  cp "$STORE"/funkrec.db* "$SCRATCH"/
fi

start=$(date +%s.%N)
FUNKREC__STORAGE__DATA_DIR=$SCRATCH FUNKREC__SERVER__BIND=127.0.0.1:$PORT \
  FUNKREC__LOG__LEVEL=${FUNKREC__LOG__LEVEL:-warn} "$BIN" serve >"$SCRATCH/log" 2>&1 &
PID=$!
peak=0
while true; do
  if ! kill -0 "$PID" 2>/dev/null; then
    echo "funkrec exited before publishing a model:" >&2
    tail -20 "$SCRATCH/log" >&2
    exit 1
  fi
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status" 2>/dev/null || echo 0)
  (( hwm > peak )) && peak=$hwm
  body=$(curl -fsS "http://127.0.0.1:$PORT/v1/model" 2>/dev/null || true)
  if [[ "$body" == *'"version":'[0-9]* ]]; then
    break
  fi
  sleep 0.5
done
end=$(date +%s.%N)
[[ -n "${BENCH_MODEL_JSON:-}" ]] && printf '%s\n' "$body" >"$BENCH_MODEL_JSON"
# BENCH_FULL=1: when the first model was cut short by training.first_model_secs, also
# wait for the full run's model (the next version) and report it on a second line.
full=
if [[ "${BENCH_FULL:-0}" == 1 && "$body" == *'"cut_short":true'* ]]; then
  first_version=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])' <<<"$body")
  while true; do
    kill -0 "$PID" 2>/dev/null || { echo "funkrec exited during the full run" >&2; exit 1; }
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status" 2>/dev/null || echo 0)
    (( hwm > peak )) && peak=$hwm
    full=$(curl -fsS "http://127.0.0.1:$PORT/v1/model" 2>/dev/null || true)
    [[ "$full" == *'"version":'[0-9]* && "$full" != *"\"version\":$first_version,"* ]] && break
    sleep 1
  done
  full_end=$(date +%s.%N)
  [[ -n "${BENCH_MODEL_JSON:-}" ]] && printf '%s\n' "$full" >"$BENCH_MODEL_JSON.full"
fi
overrides=$(env | grep '^FUNKREC__' | grep -v 'DATABASE_URL\|DATA_DIR' | sort | paste -sd' ' || true)
report() {
python3 - "$@" <<'EOF'
import json, sys
label, start, end, peak_kb, overrides, body = sys.argv[1:]
m = json.load(open(body))  # a file: a long run's epoch curve is too long for argv
print(json.dumps({
    "label": label,
    "version": m.get("version"),
    "cut_short": m.get("cut_short", False),
    "seconds_from_start": round(float(end) - float(start), 1),
    "train_seconds": round(m.get("train_seconds") or 0, 1),
    "holdout_rmse": m.get("holdout_rmse"),
    "best_epoch": m.get("best_epoch"),
    "stopped_early": m.get("stopped_early"),
    "epochs_run": len(m.get("epochs") or []),
    "factors": (m.get("hyperparameters") or {}).get("factors"),
    "threads": (m.get("hyperparameters") or {}).get("threads"),
    "ratings": (m.get("counts") or {}),
    "peak_rss_gb": round(int(peak_kb) / 1024 / 1024, 2),
    "overrides": overrides,
}))
EOF
}
printf '%s\n' "$body" >"$SCRATCH/first.json"
report "$LABEL" "$start" "$end" "$peak" "$overrides" "$SCRATCH/first.json"
if [[ -n "$full" ]]; then
  printf '%s\n' "$full" >"$SCRATCH/full.json"
  report "$LABEL" "$start" "$full_end" "$peak" "$overrides" "$SCRATCH/full.json"
fi
