-- limit_leave.lua: a run leaves its group (it ended, or never existed), and waiting runs
-- take the free slots, oldest first. With no run (""), only fills free slots (the
-- reconciler, after a lost start or a raised limit).
--
-- KEYS[1] L.info     the limit, key values of the groups   (hash)
-- KEYS[2] L.seq      submission counter                    (string)
-- KEYS[3] L.held     runs holding a slot -> lease expiry   (zset)
-- KEYS[4] L.queue    runs waiting -> submission number     (zset)
-- ARGV[1] run id, or ""
-- ARGV[2] slot lease (seconds) of the runs that take a slot
-- ARGV[3] the group (keys.limit_slot)
--
-- Returns the runs that took a slot, for the caller to start.
-- @include "clock"
-- @include "limit"
local run, lease, slot = ARGV[1], tonumber(ARGV[2]), ARGV[3]

if run ~= '' then
  redis.call('ZREM', L.held, run)
  redis.call('ZREM', L.queue, run)
end
local limit = tonumber(redis.call('HGET', L.info, 'limit') or '0')
local now = server_clock()
local admitted = fill_slots(limit, now + lease)
if redis.call('ZCARD', L.held) == 0 and redis.call('ZCARD', L.queue) == 0 then
  redis.call('HDEL', L.info, 'v:' .. slot)
end
return admitted
