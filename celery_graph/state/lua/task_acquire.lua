-- task_acquire.lua: a node message of a task with graph_concurrency and/or
-- graph_rate_limit asks to start. It starts when a slot is free (or it holds one: a slot
-- handed to it when another node finished, or its own copy's) and the rate allows; else
-- it waits, holding no worker: over the concurrency limit in the task's waiting list (its
-- message is sent again when a slot frees), over the rate for the seconds answered.
--
-- KEYS[1] T.held      holders -> slot lease expiry        (zset)
-- KEYS[2] T.waiting   waiting holders -> when they came    (zset)
-- KEYS[3] T.messages  waiting holders -> message (JSON)    (hash)
-- KEYS[4] T.rate      earliest next start, server time    (string)
-- ARGV[1] holder: "<run id>:<result field>"
-- ARGV[2] concurrency limit, or 0 for none
-- ARGV[3] slot lease (seconds): the reconciler looks at a holder once it runs out
-- ARGV[4] seconds between two starts (the rate limit), or 0 for none
-- ARGV[5] the message that wakes the holder if it has to wait (JSON)
-- ARGV[6] ttl of the keys (seconds)
--
-- Returns {Acquire.OK, 1 when the slot is new, else 0}, {Acquire.FULL, position}
-- or {Acquire.RATE, seconds to wait}.
-- @include "clock"
-- @include "tasklimit"
local holder, limit, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local interval, message, ttl = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])

local Acquire = {OK = 'ok', FULL = 'full', RATE = 'rate'}

local now = server_clock()
if limit > 0 and redis.call('ZSCORE', T.held, holder) then
  redis.call('ZADD', T.held, now + lease, holder)
  return {Acquire.OK, 0}
end
if limit > 0 and redis.call('ZCARD', T.held) >= limit then
  redis.call('ZADD', T.waiting, 'NX', now, holder)
  redis.call('HSET', T.messages, holder, message)
  redis.call('EXPIRE', T.waiting, ttl)
  redis.call('EXPIRE', T.messages, ttl)
  return {Acquire.FULL, redis.call('ZRANK', T.waiting, holder) + 1}
end
if interval > 0 then
  local next_start = tonumber(redis.call('GET', T.rate) or '0')
  if next_start > now then
    return {Acquire.RATE, string.format('%.6f', next_start - now)}
  end
  redis.call('SET', T.rate, string.format('%.6f', now + interval), 'EX', ttl)
end
if limit > 0 then
  redis.call('ZADD', T.held, now + lease, holder)
  redis.call('EXPIRE', T.held, ttl)
  redis.call('ZREM', T.waiting, holder)
  redis.call('HDEL', T.messages, holder)
end
return {Acquire.OK, 1}
