-- lib/counters.lua: the one hash of counters count.lua adds to (a worker's task counters
-- or the run counters), in the order keys.CounterKeys builds it.
local C = {
  counters = KEYS[1],  -- counters (hash)
}
