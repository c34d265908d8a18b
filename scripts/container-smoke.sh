#!/usr/bin/env bash
# Builds the image from the Dockerfile with podman and runs it: /healthz answers, a rating
# POST and a recommendation GET succeed, and the rating survives a container restart
# (data in a named volume). Loopback only; bounded waits; cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/scripts/containers.conf}
PODMAN=(podman --runtime runc)
IMAGE=localhost/funkrec:ci
NAME=funkrec-smoke-$$
VOLUME=funkrec-smoke-data-$$
# A free loopback port (another server on a fixed port would answer in our place).
PORT=${SMOKE_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
BASE="http://127.0.0.1:$PORT"
# API keys through the environment, as a deployment would pass them (the loopback
# bind alone would also allow starting without keys).
ADMIN_KEY=smoke-admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
AUTH=(-H "Authorization: Bearer $ADMIN_KEY")

build_args=$(scripts/container-base.sh)
echo "== podman build ($build_args)"
# shellcheck disable=SC2086
"${PODMAN[@]}" build --format docker --network host $build_args -t "$IMAGE" .

cleanup() {
  "${PODMAN[@]}" rm -f "$NAME" >/dev/null 2>&1 || true
  "${PODMAN[@]}" volume rm -f "$VOLUME" >/dev/null 2>&1 || true
}
trap cleanup EXIT

start() {
  "${PODMAN[@]}" run -d --name "$NAME" --network host \
    -e FUNKREC__SERVER__BIND=127.0.0.1:$PORT \
    -e FUNKREC__AUTH__KEYS="admin:$ADMIN_KEY" \
    -v "$VOLUME:/var/lib/funkrec" "$IMAGE" >/dev/null
  for _ in $(seq 1 60); do
    if curl -fsS "$BASE/healthz" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  echo "service did not become healthy"; "${PODMAN[@]}" logs "$NAME" | tail -50; return 1
}

check() { # check NAME EXPECTED_STATUS CURL_ARGS...
  local name=$1 want=$2; shift 2
  local got
  got=$(curl -sS -o /tmp/smoke-body.$$ -w '%{http_code}' "$@")
  if [ "$got" != "$want" ]; then
    echo "FAIL $name: status $got, want $want: $(cat /tmp/smoke-body.$$)"; exit 1
  fi
  echo "ok   $name ($got) $(head -c 200 /tmp/smoke-body.$$)"
}

echo "== run"
start
check healthz 200 "$BASE/healthz"
check "post rating without key" 401 -X POST "$BASE/v1/ratings" -H 'content-type: application/json' \
  -d '{"user":"alice","item":"matrix","rating":5}'
check "post rating" 201 -X POST "$BASE/v1/ratings" -H 'content-type: application/json' \
  "${AUTH[@]}" -d '{"user":"alice","item":"matrix","rating":5}'
check recommendations 200 "${AUTH[@]}" "$BASE/v1/users/alice/recommendations?n=5"
check metrics 200 "$BASE/metrics"
# The image's own HEALTHCHECK command works inside the container.
if "${PODMAN[@]}" healthcheck run "$NAME"; then
  echo "ok   container healthcheck"
else
  echo "FAIL the image's HEALTHCHECK"; exit 1
fi

echo "== restart: the rating must persist in the volume"
"${PODMAN[@]}" rm -f "$NAME" >/dev/null
start
check "ratings after restart" 200 "${AUTH[@]}" "$BASE/v1/users/alice/ratings"
grep -q '"matrix"' /tmp/smoke-body.$$ || { echo "FAIL rating lost across restart"; exit 1; }
rm -f /tmp/smoke-body.$$
echo "container smoke test passed"
