-- lease.lua: set the leases of some fields of a running run.
--
--   "renew"      the worker running them is alive: running leases that exist are moved
--   "requeue"    they wait for a retry (state "retrying") until a queued lease runs out;
--                only while the attempt that asked for it is the latest (a retry
--                delivered and finished before the old attempt reported is left alone)
--   "redeliver"  the reconciler publishes them again: counted, back to "queued"
--
-- KEYS[1] run record          (hash)
-- KEYS[2] run node state      (hash)
-- KEYS[3] running leases      (zset: field -> lease expiry, server time)
-- KEYS[4] queued leases       (zset: field -> lease expiry, server time)
-- ARGV[1] mode
-- ARGV[2] lease length (seconds from now)
-- ARGV[3] for "requeue": the attempt number that retries (begin.lua counted it), else ""
-- ARGV[4 ..] fields
--
-- Returns the number of leases set; 0 when the run is not running (but for "renew").
local status = redis.call('HGET', KEYS[1], 'status')
-- a node still running after its run was cancelled or failed keeps renewing its lease
-- (XX: only leases that exist move, so nothing is re-created): a resume then leaves it to
-- finish instead of sending it a second time
if status ~= 'running' and not (status and ARGV[1] == 'renew') then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local expiry = now + tonumber(ARGV[2])
local mode = ARGV[1]
local set = 0
for i = 4, #ARGV do
  local field = ARGV[i]
  if mode == 'renew' then
    set = set + redis.call('ZADD', KEYS[3], 'XX', 'CH', expiry, field)
  elseif mode == 'requeue' then
    local run = redis.call('HGET', KEYS[2], field .. ':run') or ''
    if redis.call('HGET', KEYS[2], field .. ':state') == 'running'
        and string.match(run, '^([^|]*)') == ARGV[3] then
      redis.call('ZREM', KEYS[3], field)
      redis.call('ZADD', KEYS[4], expiry, field)
      redis.call('HSET', KEYS[2], field .. ':state', 'retrying')
      set = set + 1
    end
  elseif mode == 'redeliver' then
    redis.call('ZREM', KEYS[3], field)
    redis.call('ZADD', KEYS[4], expiry, field)
    redis.call('HINCRBY', KEYS[2], field .. ':redelivered', 1)
    redis.call('HSET', KEYS[2], field .. ':queued', string.format('%.6f', now))
    local state = redis.call('HGET', KEYS[2], field .. ':state')
    if state == 'running' or state == 'retrying' then
      redis.call('HSET', KEYS[2], field .. ':state', 'queued')
    end
    set = set + 1
  end
end
-- a leases set emptied earlier (Redis drops an empty zset) comes back without an expiry:
-- give it the run's, so it never outlives the run
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  for i = 3, 4 do
    if redis.call('PTTL', KEYS[i]) == -1 then
      redis.call('PEXPIRE', KEYS[i], ttl)
    end
  end
end
return set
