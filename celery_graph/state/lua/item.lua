-- item.lua: store the result of one item of a chunk of a dynamic fan-out, as soon as it
-- is computed, so a chunk delivered again skips the items already done.
--
-- KEYS[1] run record          (hash)
-- KEYS[2] run results         (hash: "<node>#<i>" -> JSON result of item i)
-- ARGV[1] the item's field "<node>#<i>"
-- ARGV[2] its result (JSON)
-- ARGV[3] run ttl (seconds)
--
-- Returns 1 when stored now, 0 when stored already, -1 when the run is not running.
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then
  return -1
end
local stored = redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return stored
