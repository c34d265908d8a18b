-- wrk: POST /v1/ratings with a batch of BATCH (1000) ratings per request, each a random
-- user of 1..50000, random item 1..1682, rating 1..5 (a fresh body every request).
local dir = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local c = dofile(dir .. "common.lua")
setup = c.setup
done = c.done
local batch = tonumber(os.getenv("BATCH") or "1000")
init = function() c.seed() end
local headers = { ["Content-Type"] = "application/json" }
request = function()
  local parts = {}
  for k = 1, batch do
    parts[k] = string.format('{"user":"b%d","item":"%d","rating":%d}',
      math.random(1, 50000), math.random(1, 1682), math.random(1, 5))
  end
  return wrk.format("POST", "/v1/ratings", headers,
    '{"ratings":[' .. table.concat(parts, ",") .. ']}')
end
