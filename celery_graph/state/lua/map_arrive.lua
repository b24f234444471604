-- map_arrive.lua: one unit of a dynamic fan-out (node.map) finished: an item, or a chunk
-- of items whose results item.lua stored one by one. Stores an item's result once, drops
-- the unit's lease and records its arrival; the caller that sees every unit arrived
-- completes the map node itself (complete.lua), which is idempotent. That arrival gives
-- the map node a running lease first: if its worker dies before completing the node, the
-- lease runs out and the reconciler completes it (reclaim.lua, kind "map").
--
-- KEYS[1] K.run      run record          (hash)
-- KEYS[2] K.results  run results         (hash: "<node>#<i>" -> JSON result of item i)
-- KEYS[3] K.nodes    run node state      (hash)
-- KEYS[7] K.leases   running leases      (zset)
-- KEYS[8] K.queued   queued leases       (zset)
-- (KEYS[1..8] are the run's keys, lib/run.lua; the others are not touched here)
-- KEYS[9] map arrivals (set of unit numbers)
-- ARGV[1] the unit's field: "<node>#<i>" (an item) or "<node>@<j>" (a chunk)
-- ARGV[2] an item's result (JSON), or "" for a chunk
-- ARGV[3] the unit's number
-- ARGV[4] run ttl (seconds)
-- ARGV[5] number of units of the map
-- ARGV[6] result ttl (seconds): the arrivals' expiry once every unit is in
-- ARGV[7] the map node's id
-- ARGV[8] running lease (seconds): held by the map node from its last unit's arrival
--
-- Returns {stored, units arrived, items of the map}, stored a Stored (STORED, KEPT), or
-- {Stored.NOT_RUNNING, 0, 0} when the run is not running (an item's result is stored all
-- the same, never past the expiry of the run's keys, but its arrival is not counted: a
-- resume sends the unit again, and that copy, which finds its result, arrives).
-- @include "clock"
-- @include "run"
-- @include "counts"
-- @include "node_record"
local field, result, unit, run_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local units, result_ttl, map_node = tonumber(ARGV[5]), ARGV[6], ARGV[7]
local running_lease = tonumber(ARGV[8])
local arrivals = KEYS[FIRST_OWN_KEY]

local Stored = {STORED = 1, KEPT = 0, NOT_RUNNING = -1, IGNORED = -2}

local status = redis.call('HGET', K.run, 'status')
if status ~= 'running' then
  if status and result ~= '' then
    redis.call('HSETNX', K.results, field, result)
    adopt_run_ttl({K.results})
  end
  -- the unit's call is over: nothing runs under its lease any more
  redis.call('ZREM', K.leases, field)
  redis.call('ZREM', K.queued, field)
  return {Stored.NOT_RUNNING, 0, 0}
end
local now, nowstr = server_clock()
local stored = Stored.KEPT
if result ~= '' then
  stored = redis.call('HSETNX', K.results, field, result)
end
set_state(field, false, 'succeeded')  -- a unit: not counted (lib/counts.lua)
record_finished(field, nowstr)
redis.call('SADD', arrivals, unit)
redis.call('ZREM', K.leases, field)
redis.call('ZREM', K.queued, field)
expire_keys({K.results, K.nodes, arrivals, K.leases, K.queued}, run_ttl)
local arrived = redis.call('SCARD', arrivals)
if arrived >= units then
  redis.call('EXPIRE', arrivals, result_ttl)
  if redis.call('HEXISTS', K.results, map_node) == 0 then
    redis.call('ZADD', K.leases, now + running_lease, map_node)
    redis.call('EXPIRE', K.leases, run_ttl)
  end
end
return {stored, arrived, tonumber(redis.call('HGET', K.nodes, map_node .. ':items') or '0')}
