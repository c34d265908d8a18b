-- wrk: the fold-in write mix of scripts/bench-serve.sh. POST /v1/ratings with one
-- rating of a user the snapshot knows (1..943), random item 1..1682, rating 1..5, so
-- that user's next recommendation is folded in. Each connection waits FOLDIN_DELAY_MS
-- (default 1) between requests, which bounds the write rate. WRITE_USERS=LO-HI picks
-- the users instead (e.g. 100000-900000: users the snapshot does not know, so no user
-- that recs.lua asks for is folded in; scripts/bench-serve-compare.sh).
local dir = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local c = dofile(dir .. "common.lua")
setup = c.setup
done = c.done
init = function() c.seed() end
local headers = { ["Content-Type"] = "application/json" }
local pause = tonumber(os.getenv("FOLDIN_DELAY_MS") or "1")
local lo, hi = (os.getenv("WRITE_USERS") or "1-943"):match("(%d+)-(%d+)")
lo, hi = tonumber(lo), tonumber(hi)
delay = function() return pause end
request = function()
  local body = string.format('{"user":"%d","item":"%d","rating":%d}',
    math.random(lo, hi), math.random(1, 1682), math.random(1, 5))
  return wrk.format("POST", "/v1/ratings", headers, body)
end
