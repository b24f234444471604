-- worker_leave.lua: a worker that stops cleanly removes its entry and counters, unless
-- another worker holds the name by now.
--
-- KEYS[1] worker entry          (hash)
-- KEYS[2] worker counters       (hash)
-- ARGV[1] this worker's token
--
-- Returns 1 when removed, 0 when the entry was gone or belongs to another worker.
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
