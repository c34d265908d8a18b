# Sourced by the scripts that test the real server on loopback (schemathesis.sh,
# client-python.sh, dashboard-browser.sh): the binary, a free port, a random key, waiting
# for health and stopping the server. Callers set ROOT and TARGET first.

# FUNKREC_BIN, built in debug when not given.
if [[ -z "${FUNKREC_BIN:-}" ]]; then
  echo "== cargo build --bin funkrec"
  cargo build --quiet --bin funkrec
  FUNKREC_BIN=$TARGET/debug/funkrec
fi

# A free loopback port (another server on a fixed port would answer in our place).
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"
SERVER_PID=

# random_key PREFIX: a fresh API key.
random_key() {
  echo "$1-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
}

# wait_healthy LOG: until /healthz answers; fails with the server's LOG if it exits.
wait_healthy() {
  for _ in $(seq 1 100); do
    if curl -fsS "$BASE/healthz" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then echo "server exited:"; cat "$1"; exit 1; fi
    sleep 0.2
  done
}

# stop_server: SIGTERM, up to 5 s for a graceful exit, then SIGKILL.
stop_server() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
}
