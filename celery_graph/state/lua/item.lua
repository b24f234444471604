-- item.lua: store the results of items of a chunk of a dynamic fan-out as they are
-- computed (the worker sends them a few at a time), so a chunk delivered again skips the
-- items already done.
--
-- KEYS[1] run record          (hash)
-- KEYS[2] run results         (hash: "<node>#<i>" -> JSON result of item i)
-- ARGV[1] run ttl (seconds)
-- ARGV[2..] field "<node>#<i>", its result (JSON), ... one pair per item
--
-- Returns the number of items stored now (one stored already is kept), or -1 when the
-- run is not running.
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then
  return -1
end
local stored = 0
for i = 2, #ARGV, 2 do
  stored = stored + redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[2], ARGV[1])
return stored
