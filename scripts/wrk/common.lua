-- Shared by the wrk scripts of scripts/bench-*.sh: numbers each wrk thread (so every
-- thread seeds its own random stream) and prints one machine-readable RESULT line.
local M = {}
local threads = {}
local counter = 0

function M.setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
  table.insert(threads, thread)
end

function M.seed()
  math.randomseed((tonumber(tid) or 0) * 7919 + os.time())
end

-- RESULT rps=<requests/s> p50_ms=.. p99_ms=.. requests=.. errors=.. (non-2xx + socket errors)
function M.done(summary, latency, requests)
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.status + e.timeout
  local secs = summary.duration / 1e6
  io.write(string.format(
    "RESULT rps=%.1f p50_ms=%.3f p99_ms=%.3f requests=%d errors=%d status_errors=%d\n",
    summary.requests / secs, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests, errors, e.status))
end

return M
