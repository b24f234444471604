-- lib/tasklimit.lua: one task's fleet-wide limits, its keys named once. All carry the
-- task's {name} hash tag, in the order keys.TaskLimitKeys builds them.
local T = {
  held = KEYS[1],      -- "<run>:<field>" running the task -> slot lease expiry (zset)
  waiting = KEYS[2],   -- "<run>:<field>" waiting for a slot -> when it came (zset)
  messages = KEYS[3],  -- "<run>:<field>" -> the message that wakes it (hash)
  rate = KEYS[4],      -- the earliest server time the task may start next (string)
}
