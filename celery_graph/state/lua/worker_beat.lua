-- worker_beat.lua: a registered worker's heartbeat.
--
-- KEYS[1] worker entry          (hash)
-- KEYS[2] worker counters       (hash)
-- ARGV[1] this worker's token
-- ARGV[2] ttl of both keys (seconds)
-- ARGV[3] tasks in flight now, or ""
-- ARGV[4..] field, value, ... that changed (queues, state)
--
-- Returns {"ok", now} or {"taken", now} when another worker holds the name now (this
-- one's entry had expired, e.g. after a long pause, and the name was claimed again).
-- An entry that vanished (Redis restarted, or it expired) is written again.
local t = redis.call('TIME')
local nowstr = string.format('%d.%06d', t[1], t[2])
local owner = redis.call('HGET', KEYS[1], 'token')
if owner and owner ~= ARGV[1] then
  return {'taken', nowstr}
end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'heartbeat', nowstr, unpack(fields))
if not owner then
  redis.call('HSETNX', KEYS[1], 'started', nowstr)
end
redis.call('HSETNX', KEYS[2], 'processed', 0)
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], 'in_flight', ARGV[3])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return {'ok', nowstr}
