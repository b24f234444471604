-- map_arrive.lua: one element of a dynamic fan-out (node.map) finished. Stores the
-- element's result once and records its arrival; the caller that sees every element
-- arrived completes the map node itself (complete.lua), which is idempotent.
--
-- KEYS[1] run record          (hash)
-- KEYS[2] run results         (hash: "<node>#<i>" -> JSON result of element i)
-- KEYS[3] run node state      (hash)
-- KEYS[4] map arrivals        (set of element indexes)
-- ARGV[1] element field "<node>#<i>"
-- ARGV[2] result (JSON)
-- ARGV[3] element index i
-- ARGV[4] run ttl (seconds)
-- ARGV[5] now (unix seconds)
--
-- Returns {stored, elements arrived}, or {-1, 0} when the run is not running.
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then
  return {-1, 0}
end
local stored = redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1] .. ':state', 'succeeded', ARGV[1] .. ':finished', ARGV[5])
redis.call('SADD', KEYS[4], ARGV[3])
for i = 2, 4 do
  redis.call('EXPIRE', KEYS[i], ARGV[4])
end
return {stored, redis.call('SCARD', KEYS[4])}
