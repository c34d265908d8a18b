-- wrk: GET /v1/users/{u}/recommendations?n=10 over random MovieLens 100K users 1..943.
local dir = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local c = dofile(dir .. "common.lua")
setup = c.setup
done = c.done
init = function() c.seed() end
request = function()
  return wrk.format("GET", string.format("/v1/users/%d/recommendations?n=10",
    math.random(1, 943)))
end
