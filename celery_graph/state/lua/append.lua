-- append.lua: append a value to a list in a run's shared state, atomically, so parallel
-- writers never lose an update and items keep one total order.
--
-- KEYS[1] run shared state (hash: "v:<key>" values, "n:<key>" list length,
--         "l:<key>:<i>" list items, all JSON)
-- ARGV[1] list key
-- ARGV[2] value (JSON)
-- ARGV[3] run ttl (seconds)
--
-- Returns the new length of the list.
local n = redis.call('HINCRBY', KEYS[1], 'n:' .. ARGV[1], 1)
redis.call('HSET', KEYS[1], 'l:' .. ARGV[1] .. ':' .. n, ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return n
