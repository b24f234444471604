-- worker_claim.lua: register a starting worker under its name (Celery's hostname), unless
-- another worker with that name is alive. Its two keys share the {hostname} hash tag.
--
-- KEYS[1] W.entry    worker entry        (hash: hostname, pid, node, token, queues,
--                                         started, ...)
-- KEYS[2] W.metrics  worker counters     (hash: counters and histograms of the pool
--                                         processes)
-- ARGV[1] this worker's token (unique per process start)
-- ARGV[2] ttl of both keys (seconds)
-- ARGV[3] live window (seconds): an entry whose last heartbeat is younger belongs to a
--         live worker
-- ARGV[4] "1": take the name even from a live-looking entry (its owner is known dead)
-- ARGV[5] tasks in flight now, or ""
-- ARGV[6..] field, value, ... of the entry
--
-- Returns {NameClaim.CLAIMED, now} or {NameClaim.LIVE, token, pid, node, age of its
-- heartbeat}.
-- Times are the server's (TIME), as strings of seconds with microseconds.
-- @include "clock"
-- @include "worker"
local token, ttl, live_window = ARGV[1], ARGV[2], tonumber(ARGV[3])
local force, in_flight = ARGV[4] == '1', ARGV[5]
local FIRST_FIELD = 6

local NameClaim = {CLAIMED = 'claimed', LIVE = 'live'}

local now, nowstr = server_clock()
if not force then
  local owner = redis.call('HMGET', W.entry, 'token', 'pid', 'node', 'heartbeat')
  if owner[1] and owner[1] ~= token and owner[4] then
    local age = now - tonumber(owner[4])
    if age < live_window then
      return {NameClaim.LIVE, owner[1], owner[2] or '', owner[3] or '',
              string.format('%.3f', age)}
    end
  end
end
-- a new start counts from zero, like a process restart
redis.call('DEL', W.entry, W.metrics)
local fields = {}
for i = FIRST_FIELD, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', W.entry, 'token', token, 'started', nowstr, 'heartbeat', nowstr,
           unpack(fields))
redis.call('HSET', W.metrics, 'processed', 0)
if in_flight ~= '' then
  redis.call('HSET', W.metrics, 'in_flight', in_flight)
end
redis.call('EXPIRE', W.entry, ttl)
redis.call('EXPIRE', W.metrics, ttl)
return {NameClaim.CLAIMED, nowstr}
