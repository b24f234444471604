-- lib/limit.lua: one slot group of a concurrency limit, its keys named once. All carry
-- the limit's {scope} hash tag, in the order keys.LimitKeys builds them.
local L = {
  info = KEYS[1],   -- the limit and the key values of its groups (hash)
  seq = KEYS[2],    -- submission counter (string)
  held = KEYS[3],   -- runs holding a slot -> lease expiry (zset)
  queue = KEYS[4],  -- runs waiting -> submission number (zset)
}

-- Move waiting runs, oldest first, into free slots (leased until ``expiry``); the runs
-- moved, for the caller to start.
local function fill_slots(limit, expiry)
  local admitted = {}
  while redis.call('ZCARD', L.held) < limit do
    local head = redis.call('ZRANGE', L.queue, 0, 0)
    if #head == 0 then
      break
    end
    redis.call('ZREM', L.queue, head[1])
    redis.call('ZADD', L.held, expiry, head[1])
    admitted[#admitted + 1] = head[1]
  end
  return admitted
end
