-- resume.lua: reopen a failed or cancelled run so its unfinished nodes can be dispatched
-- again; results already stored are kept. The caller then publishes ARGV[3..].
--
-- KEYS[1] run record          (hash)
-- KEYS[2] run node state      (hash)
-- KEYS[3] completion signal   (list)
-- KEYS[4 ..] every key of the run, whose expiry goes back to the run ttl
-- ARGV[1] run ttl (seconds)
-- ARGV[2] now (unix seconds)
-- ARGV[3 ..] ids of the nodes to dispatch again (unfinished, every predecessor finished)
--
-- Returns the previous status when the run was resumed, or {err} when it is not resumable.
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'failed' and status ~= 'cancelled' then
  return redis.error_reply('not resumable: run is ' .. tostring(status))
end
redis.call('HSET', KEYS[1], 'status', 'running', 'resumed', ARGV[2])
redis.call('HDEL', KEYS[1], 'error', 'finished', 'deadline')
redis.call('DEL', KEYS[3])
for i = 3, #ARGV do
  redis.call('HSET', KEYS[2], ARGV[i] .. ':dispatch', 'published')
  redis.call('HDEL', KEYS[2], ARGV[i] .. ':state')
end
for i = 4, #KEYS do
  redis.call('EXPIRE', KEYS[i], ARGV[1])
end
return status
