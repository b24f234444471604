-- worker_beat.lua: a registered worker's heartbeat.
--
-- KEYS[1] W.entry    worker entry        (hash)
-- KEYS[2] W.metrics  worker counters     (hash)
-- ARGV[1] this worker's token
-- ARGV[2] ttl of both keys (seconds)
-- ARGV[3] tasks in flight now, or ""
-- ARGV[4..] field, value, ... that changed (queues, state)
--
-- Returns {Beat.OK, now} or {Beat.TAKEN, now} when another worker holds the name now
-- (this one's entry had expired, e.g. after a long pause, and the name was claimed
-- again). An entry that vanished (Redis restarted, or it expired) is written again.
-- @include "clock"
-- @include "worker"
local token, ttl, in_flight = ARGV[1], ARGV[2], ARGV[3]
local FIRST_FIELD = 4

local Beat = {OK = 'ok', TAKEN = 'taken'}

local _, nowstr = server_clock()
local owner = redis.call('HGET', W.entry, 'token')
if owner and owner ~= token then
  return {Beat.TAKEN, nowstr}
end
local fields = {}
for i = FIRST_FIELD, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', W.entry, 'token', token, 'heartbeat', nowstr, unpack(fields))
if not owner then
  redis.call('HSETNX', W.entry, 'started', nowstr)
end
redis.call('HSETNX', W.metrics, 'processed', 0)
if in_flight ~= '' then
  redis.call('HSET', W.metrics, 'in_flight', in_flight)
end
redis.call('EXPIRE', W.entry, ttl)
redis.call('EXPIRE', W.metrics, ttl)
return {Beat.OK, nowstr}
