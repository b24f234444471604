-- task_release.lua: a holder of a task's slot is done with it (its node ran, failed,
-- will retry, or its worker died: the reconciler), or "" to only hand out free slots.
-- The oldest waiting node takes the freed slot now (leased until its message, sent again
-- by the caller, arrives), so nothing that came later can take it first.
--
-- KEYS[1] T.held      holders -> slot lease expiry        (zset)
-- KEYS[2] T.waiting   waiting holders -> when they came    (zset)
-- KEYS[3] T.messages  waiting holders -> message (JSON)    (hash)
-- (KEYS[4] T.rate is not touched here)
-- ARGV[1] holder, or ""
-- ARGV[2] concurrency limit
-- ARGV[3] slot lease of the woken holder (seconds)
--
-- Returns the messages of the waiting nodes that took a slot (JSON), for the caller to
-- send again.
-- @include "clock"
-- @include "tasklimit"
local holder, limit, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

if holder ~= '' then
  redis.call('ZREM', T.held, holder)
  redis.call('ZREM', T.waiting, holder)
  redis.call('HDEL', T.messages, holder)
end
local now = server_clock()
local woken = {}
while redis.call('ZCARD', T.held) < limit do
  local head = redis.call('ZRANGE', T.waiting, 0, 0)
  if #head == 0 then
    break
  end
  local message = redis.call('HGET', T.messages, head[1])
  redis.call('ZREM', T.waiting, head[1])
  redis.call('HDEL', T.messages, head[1])
  if message then
    redis.call('ZADD', T.held, now + lease, head[1])
    woken[#woken + 1] = message
  end
end
return woken
