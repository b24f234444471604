-- expand.lua: a map node became ready and expands into one message per unit (an item, or a
-- chunk of items). Gives every unit a lease before the caller publishes the units, so one
-- whose message is lost is published again by the reconciler; a big map is leased in
-- parts (units ARGV[5] to ARGV[6] - 1), and the last part records the item count and
-- drops the map node's own lease. A copy of the map node's message that finds the count
-- does not publish the items again; one that comes before (its worker died between
-- parts) leases them all again.
--
-- KEYS[1] K.run      run record          (hash)
-- KEYS[3] K.nodes    run node state      (hash)
-- KEYS[7] K.leases   running leases      (zset: the map node's own)
-- KEYS[8] K.queued   queued leases       (zset: the items')
-- (KEYS[1..8] are the run's keys, lib/run.lua; the others are not touched here)
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
-- @include "clock"
-- @include "run"
-- @include "counts"
local node, items, queued_lease, run_ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local from, to = tonumber(ARGV[5]), tonumber(ARGV[6])
local units, sep = tonumber(ARGV[7]), ARGV[8]

if redis.call('HGET', K.run, 'status') ~= 'running' then
  return 0
end
if redis.call('HEXISTS', K.nodes, node .. ':items') == 1 then
  return 0
end
local now, nowstr = server_clock()
local expiry = now + queued_lease
for i = from, to - 1 do
  redis.call('ZADD', K.queued, expiry, node .. sep .. i)
end
if to >= units then
  set_state(node, redis.call('HGET', K.nodes, node .. ':state'), 'mapping',
            node .. ':items', items, node .. ':queued', nowstr)
  redis.call('ZREM', K.leases, node)
end
expire_keys({K.nodes, K.leases, K.queued}, run_ttl)
return 1
