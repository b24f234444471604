-- map_arrive.lua: one unit of a dynamic fan-out (node.map) finished: an item, or a chunk
-- of items whose results item.lua stored one by one. Stores an item's result once, drops
-- the unit's lease and records its arrival; the caller that sees every unit arrived
-- completes the map node itself (complete.lua), which is idempotent. That arrival gives
-- the map node a running lease first: if its worker dies before completing the node, the
-- lease runs out and the reconciler completes it (reclaim.lua, kind "map").
--
-- KEYS[1] run record          (hash)
-- KEYS[2] run results         (hash: "<node>#<i>" -> JSON result of item i)
-- KEYS[3] run node state      (hash)
-- KEYS[4] map arrivals        (set of unit numbers)
-- KEYS[5] running leases      (zset)
-- KEYS[6] queued leases       (zset)
-- ARGV[1] the unit's field: "<node>#<i>" (an item) or "<node>@<j>" (a chunk)
-- ARGV[2] an item's result (JSON), or "" for a chunk
-- ARGV[3] the unit's number
-- ARGV[4] run ttl (seconds)
-- ARGV[5] number of units of the map
-- ARGV[6] result ttl (seconds): the arrivals' expiry once every unit is in
-- ARGV[7] the map node's id
-- ARGV[8] running lease (seconds): held by the map node from its last unit's arrival
--
-- Returns {stored, units arrived, items of the map}, or {-1, 0, 0} when the run is not
-- running (an item's result is stored all the same, never past the expiry of the run's
-- keys, but its arrival is not counted: a resume sends the unit again, and that copy,
-- which finds its result, arrives).
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' then
  if status and ARGV[2] ~= '' then
    local ttl = redis.call('PTTL', KEYS[1])
    redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
    if ttl > 0 and redis.call('PTTL', KEYS[2]) == -1 then
      redis.call('PEXPIRE', KEYS[2], ttl)
    end
  end
  -- the unit's call is over: nothing runs under its lease any more
  redis.call('ZREM', KEYS[5], ARGV[1])
  redis.call('ZREM', KEYS[6], ARGV[1])
  return {-1, 0, 0}
end
-- "<field>:run" packs what an attempt records: "attempts|started|finished|worker"
local function finished(field, when)
  local raw = redis.call('HGET', KEYS[3], field .. ':run') or '0|||'
  local a, s, _, w = string.match(raw, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
  redis.call('HSET', KEYS[3], field .. ':run', a .. '|' .. s .. '|' .. when .. '|' .. w)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local nowstr = string.format('%.6f', now)
local stored = 0
if ARGV[2] ~= '' then
  stored = redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
end
redis.call('HSET', KEYS[3], ARGV[1] .. ':state', 'succeeded')
finished(ARGV[1], nowstr)
redis.call('SADD', KEYS[4], ARGV[3])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
for i = 2, 6 do
  redis.call('EXPIRE', KEYS[i], ARGV[4])
end
local arrived = redis.call('SCARD', KEYS[4])
if arrived >= tonumber(ARGV[5]) then
  redis.call('EXPIRE', KEYS[4], ARGV[6])
  if redis.call('HEXISTS', KEYS[2], ARGV[7]) == 0 then
    redis.call('ZADD', KEYS[5], now + tonumber(ARGV[8]), ARGV[7])
    redis.call('EXPIRE', KEYS[5], ARGV[4])
  end
end
return {stored, arrived, tonumber(redis.call('HGET', KEYS[3], ARGV[7] .. ':items') or '0')}
