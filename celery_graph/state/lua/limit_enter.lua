-- limit_enter.lua: a run of a flow with a concurrency limit asks for a slot of its group
-- (one key value). It takes one when the group has room and nobody waits, else it waits
-- in submission order. Asking again (a retried submission) answers the same.
--
-- KEYS[1] L.info     the limit, key values of the groups   (hash)
-- KEYS[2] L.seq      submission counter                    (string)
-- KEYS[3] L.held     runs holding a slot -> lease expiry   (zset)
-- KEYS[4] L.queue    runs waiting -> submission number     (zset)
-- ARGV[1] run id
-- ARGV[2] the limit (runs at once in the group)
-- ARGV[3] slot lease (seconds): the reconciler looks at a holder once it runs out
-- ARGV[4] the group (keys.limit_slot)
-- ARGV[5] the key value (JSON), for listings
-- ARGV[6] ttl of the keys (seconds): nothing of a limit outlives its runs for long
--
-- Returns {1, 0} when the run holds a slot, {0, position} when it waits (1: next).
-- @include "clock"
-- @include "limit"
local run, limit, lease, slot = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local value, ttl = ARGV[5], tonumber(ARGV[6])

redis.call('HSET', L.info, 'limit', limit, 'v:' .. slot, value)
redis.call('EXPIRE', L.info, ttl)
if redis.call('ZSCORE', L.held, run) then
  return {1, 0}
end
local rank = redis.call('ZRANK', L.queue, run)
if rank then
  return {0, rank + 1}
end
local now = server_clock()
if redis.call('ZCARD', L.held) < limit and redis.call('ZCARD', L.queue) == 0 then
  redis.call('ZADD', L.held, now + lease, run)
  redis.call('EXPIRE', L.held, ttl)
  return {1, 0}
end
local n = redis.call('INCR', L.seq)
redis.call('EXPIRE', L.seq, ttl)
redis.call('ZADD', L.queue, n, run)
redis.call('EXPIRE', L.queue, ttl)
return {0, redis.call('ZRANK', L.queue, run) + 1}
