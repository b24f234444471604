-- lib/clock.lua: the Redis server's clock, the only clock graph state uses (DESIGN.md,
-- invariant 10).

-- Now, in seconds since the epoch, and the same as stored: text with six decimals.
local function server_clock()
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  return now, string.format('%.6f', now)
end
