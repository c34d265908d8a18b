-- wrk: POST /v1/ratings with one rating per request: random user of 1..50000 (new ones
-- too), random item 1..1682, rating 1..5.
local dir = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local c = dofile(dir .. "common.lua")
setup = c.setup
done = c.done
init = function() c.seed() end
local headers = { ["Content-Type"] = "application/json" }
request = function()
  local body = string.format('{"user":"w%d","item":"%d","rating":%d}',
    math.random(1, 50000), math.random(1, 1682), math.random(1, 5))
  return wrk.format("POST", "/v1/ratings", headers, body)
end
