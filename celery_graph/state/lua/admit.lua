-- admit.lua: a queued run (over its flow's concurrency limit) took a slot: it starts now,
-- its roots marked published and leased like start.lua's. Only the call that moves it
-- from queued to running answers 1, so its roots are published once.
--
-- KEYS[1] K.run      run record          (hash)
-- KEYS[3] K.nodes    node state          (hash)
-- KEYS[8] K.queued   queued leases       (zset: node -> lease expiry, server time)
-- (KEYS[1..8] are the run's keys, lib/run.lua; the others are not touched here)
-- ARGV[1] queued lease (seconds)
-- ARGV[2 ..] pairs: root id, its start delay in seconds
--
-- Returns {1, now} when this call started the run, {0, status or ""} otherwise.
-- @include "clock"
-- @include "run"
-- @include "counts"
local lease = tonumber(ARGV[1])
local FIRST_ROOT = 2

local status = redis.call('HGET', K.run, 'status')
if status ~= 'queued' then
  return {0, status or ''}
end
local now, nowstr = server_clock()
redis.call('HSET', K.run, 'status', 'running', 'admitted', nowstr)
for i = FIRST_ROOT, #ARGV, 2 do
  local root = ARGV[i]
  redis.call('HSET', K.nodes, root .. ':state', 'queued', root .. ':queued', nowstr)
  count_move(root, false, 'queued')
  redis.call('ZADD', K.queued, now + tonumber(ARGV[i + 1]) + lease, root)
end
counts_into({})  -- one HINCRBY, however many roots (lib/counts.lua)
adopt_run_ttl({K.nodes, K.queued})
return {1, nowstr}
