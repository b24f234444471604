-- worker_leave.lua: a worker that stops cleanly removes its entry and counters, unless
-- another worker holds the name by now.
--
-- KEYS[1] W.entry    worker entry        (hash)
-- KEYS[2] W.metrics  worker counters     (hash)
-- ARGV[1] this worker's token
--
-- Returns 1 when removed, 0 when the entry was gone or belongs to another worker.
-- @include "worker"
local token = ARGV[1]

if redis.call('HGET', W.entry, 'token') ~= token then
  return 0
end
redis.call('DEL', W.entry, W.metrics)
return 1
