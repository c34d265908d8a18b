#!/usr/bin/env bash
# Evaluates funkrec on the official MovieLens 100K folds u1–u5; extra args go to `funkrec eval`.
# Usage: scripts/eval-ml100k.sh [--trainer sgd|gd|funk|svdpp] [--factors N ...] [--json]
set -euo pipefail
D=${ML100K:-"$(dirname "$0")/../../shared/data/ml-100k"}
BIN=${FUNKREC:-"$(dirname "$0")/../target/release/funkrec"}
args=()
for f in 1 2 3 4 5; do args+=(--train "$D/u$f.base" --test "$D/u$f.test"); done
exec "$BIN" eval -q "${args[@]}" "$@"
