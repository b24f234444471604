-- lib/worker.lua: a worker's two keys, named once. Both carry the worker's {hostname}
-- hash tag, in the order keys.WorkerKeys builds them.
local W = {
  entry = KEYS[1],    -- registry entry (hash)
  metrics = KEYS[2],  -- task counters (hash)
}
