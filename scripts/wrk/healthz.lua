-- wrk: GET /healthz (the path given on the command line), reporting via common.lua.
local dir = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local c = dofile(dir .. "common.lua")
setup = c.setup
done = c.done
