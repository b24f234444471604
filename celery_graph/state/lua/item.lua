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
-- run is not running (what was computed is stored all the same, so a resume does not call
-- it again, and never past the expiry of the run's keys).
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' then
  if status then
    local ttl = redis.call('PTTL', KEYS[1])
    for i = 2, #ARGV, 2 do
      redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1])
    end
    if ttl > 0 and redis.call('PTTL', KEYS[2]) == -1 then
      redis.call('PEXPIRE', KEYS[2], ttl)
    end
  end
  return -1
end
local stored = 0
for i = 2, #ARGV, 2 do
  stored = stored + redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[2], ARGV[1])
return stored
