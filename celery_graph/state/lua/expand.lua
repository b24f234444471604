-- expand.lua: a map node became ready and expands into one message per item. Records the
-- item count once and gives every item a lease before the caller publishes the items, so
-- an item whose message is lost is published again by the reconciler. A redelivered copy
-- of the map node's message finds the count and does not publish the items again.
--
-- KEYS[1] run record          (hash)
-- KEYS[2] run node state      (hash)
-- KEYS[3] leases              (zset)
-- ARGV[1] map node id
-- ARGV[2] number of items
-- ARGV[3] queued lease (seconds)
-- ARGV[4] run ttl (seconds)
--
-- Returns 1 when this call expanded the node, 0 when it was expanded already or the run
-- is not running.
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then
  return 0
end
local node = ARGV[1]
if redis.call('HSETNX', KEYS[2], node .. ':items', ARGV[2]) == 0 then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('HSET', KEYS[2], node .. ':state', 'mapping', node .. ':queued',
           string.format('%.6f', now))
redis.call('ZREM', KEYS[3], node)
local expiry = now + tonumber(ARGV[3])
for i = 0, tonumber(ARGV[2]) - 1 do
  redis.call('ZADD', KEYS[3], expiry, node .. '#' .. i)
end
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[4])
return 1
