-- count.lua: add to several counters of one hash at once, so that a scrape never sees a
-- task counted as processed without its outcome, or a histogram's count without its
-- bucket. (A MULTI/EXEC pipeline did this before; redis-py's cluster client refuses
-- transactions before 6.x, and a script runs alike on every client.)
--
-- KEYS[1] C.counters  counters  (hash)
-- ARGV[1] ttl of the hash (seconds)
-- ARGV[2] n: how many whole-number increments follow
-- ARGV[3..2+2n] field, whole amount, ...  (HINCRBY)
-- ARGV[3+2n..]  field, float amount, ...  (HINCRBYFLOAT)
--
-- Returns 1.
-- @include "counters"
local ttl, whole = ARGV[1], tonumber(ARGV[2])
local FIRST_FIELD = 3

local floats_from = FIRST_FIELD + 2 * whole
for i = FIRST_FIELD, floats_from - 1, 2 do
  redis.call('HINCRBY', C.counters, ARGV[i], ARGV[i + 1])
end
for i = floats_from, #ARGV, 2 do
  redis.call('HINCRBYFLOAT', C.counters, ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', C.counters, ttl)
return 1
