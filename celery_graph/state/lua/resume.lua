-- resume.lua: reopen a failed or cancelled run so the nodes it had not finished run again;
-- results already stored are kept. The caller computes, from each node's state, which
-- nodes and map items to send again (unfinished, every predecessor done, not running
-- under a live lease); this resets their markers and gives each a lease before the
-- caller publishes them, so a publish that fails is recovered by the reconciler.
--
-- KEYS[1] run record          (hash)
-- KEYS[2] run node state      (hash)
-- KEYS[3] completion signal   (list)
-- KEYS[4] running leases      (zset)
-- KEYS[5] run results         (hash)
-- KEYS[6] finished sinks      (set)
-- KEYS[7] run shared state    (hash)
-- KEYS[8] queued leases       (zset)
-- (all but the completion signal go back to the run ttl)
-- ARGV[1] run ttl (seconds)
-- ARGV[2] queued lease (seconds)
-- ARGV[3] N, the number of fields to send again
-- ARGV[4 .. 3+N] fields to send again: node ids, or "<node>#<i>" / "<node>@<j>" for items
--            or chunks of a map
-- ARGV[4+N ..] fields the caller found running: each whose running lease is gone by now
--            (it ended into the closed run: its result is kept, its arrival is not made)
--            is sent again too
--
-- Returns the fields of ARGV[4+N ..] to send as well, or {err} when the run is not
-- resumable.
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'failed' and status ~= 'cancelled' then
  return redis.error_reply('not resumable: run is ' .. tostring(status))
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local nowstr = string.format('%.6f', now)
redis.call('HSET', KEYS[1], 'status', 'running', 'resumed', nowstr)
redis.call('HDEL', KEYS[1], 'error', 'finished', 'deadline', 'unsent', 'continued')
redis.call('DEL', KEYS[3])
local expiry = now + tonumber(ARGV[2])
local function send(field)
  redis.call('HSET', KEYS[2], field .. ':state', 'queued', field .. ':queued', nowstr)
  redis.call('HDEL', KEYS[2], field .. ':error', field .. ':unsettled', field .. ':lost')
  redis.call('ZREM', KEYS[4], field)
  redis.call('ZADD', KEYS[8], expiry, field)
end
local n = tonumber(ARGV[3])
for i = 4, 3 + n do
  send(ARGV[i])
end
local late = {}
for i = 4 + n, #ARGV do
  if not redis.call('ZSCORE', KEYS[4], ARGV[i]) then
    send(ARGV[i])
    late[#late + 1] = ARGV[i]
  end
end
for _, i in ipairs({1, 2, 4, 5, 6, 7, 8}) do
  redis.call('EXPIRE', KEYS[i], ARGV[1])
end
return late
