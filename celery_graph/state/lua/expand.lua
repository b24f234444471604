-- expand.lua: a map node became ready and expands into one message per unit (an item, or a
-- chunk of items). Gives every unit a lease before the caller publishes the units, so one
-- whose message is lost is
-- published again by the reconciler; a big map is leased in parts (units ARGV[5] to
-- ARGV[6] - 1), and the last part records the item count and drops the map node's own
-- lease. A copy of the map node's message that finds the count does not publish the items
-- again; one that comes before (its worker died between parts) leases them all again.
--
-- KEYS[1] run record          (hash)
-- KEYS[2] run node state      (hash)
-- KEYS[3] running leases      (zset: the map node's own)
-- KEYS[4] queued leases       (zset: the items')
-- ARGV[1] map node id
-- ARGV[2] number of items (kept as "<node>:items")
-- ARGV[3] queued lease (seconds)
-- ARGV[4] run ttl (seconds)
-- ARGV[5] first unit of this part
-- ARGV[6] one past the last unit of this part (ARGV[7] in the last part)
-- ARGV[7] number of units: the items, or the chunks of items
-- ARGV[8] "#" when a unit is an item, "@" when it is a chunk
--
-- Returns 1 when this part was leased, 0 when the map was expanded already or the run is
-- not running.
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then
  return 0
end
local node = ARGV[1]
if redis.call('HEXISTS', KEYS[2], node .. ':items') == 1 then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local expiry = now + tonumber(ARGV[3])
for i = tonumber(ARGV[5]), tonumber(ARGV[6]) - 1 do
  redis.call('ZADD', KEYS[4], expiry, node .. ARGV[8] .. i)
end
if tonumber(ARGV[6]) >= tonumber(ARGV[7]) then
  redis.call('HSET', KEYS[2], node .. ':items', ARGV[2], node .. ':state', 'mapping',
             node .. ':queued', string.format('%.6f', now))
  redis.call('ZREM', KEYS[3], node)
end
for i = 2, 4 do
  redis.call('EXPIRE', KEYS[i], ARGV[4])
end
return 1
