-- wrk: the fold-in write mix of scripts/bench-serve.sh. POST /v1/ratings with one
-- rating of a user the snapshot knows (1..943), random item 1..1682, rating 1..5, so
-- that user's next recommendation is folded in. Each connection waits FOLDIN_DELAY_MS
-- (default 1) between requests, which bounds the write rate.
local dir = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local c = dofile(dir .. "common.lua")
setup = c.setup
done = c.done
init = function() c.seed() end
local headers = { ["Content-Type"] = "application/json" }
local pause = tonumber(os.getenv("FOLDIN_DELAY_MS") or "1")
delay = function() return pause end
request = function()
  local body = string.format('{"user":"%d","item":"%d","rating":%d}',
    math.random(1, 943), math.random(1, 1682), math.random(1, 5))
  return wrk.format("POST", "/v1/ratings", headers, body)
end
