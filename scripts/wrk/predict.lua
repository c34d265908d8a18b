-- wrk: GET /v1/users/{u}/predictions/{i} over random MovieLens 100K users 1..943, items 1..1682.
local dir = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local c = dofile(dir .. "common.lua")
setup = c.setup
done = c.done
init = function() c.seed() end
request = function()
  return wrk.format("GET", string.format("/v1/users/%d/predictions/%d",
    math.random(1, 943), math.random(1, 1682)))
end
