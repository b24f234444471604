-- finish.lua: end a run that is still running as failed or cancelled, wake its waiters and
-- set the expiry of every key of the run. The first caller wins; later ones change nothing.
--
-- KEYS[1] run record          (hash)
-- KEYS[2] run node state      (hash)
-- KEYS[3] completion signal   (list)
-- KEYS[4 ..] every key of the run, to expire
-- ARGV[1] final status: "failed" or "cancelled"
-- ARGV[2] node id that caused it, or "" (cancel)
-- ARGV[3] error (JSON), or ""
-- ARGV[4] result ttl (seconds)
-- ARGV[5] now (unix seconds)
--
-- Returns 1 when this call ended the run, 0 when it had already ended.
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished', ARGV[5])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'error', ARGV[3])
end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[2] .. ':state', 'failed', ARGV[2] .. ':finished', ARGV[5])
end
redis.call('RPUSH', KEYS[3], ARGV[1])
for i = 4, #KEYS do
  redis.call('EXPIRE', KEYS[i], ARGV[4])
end
return 1
