-- park.lua: a failed or cancelled run of a flow with a concurrency limit is resumed while
-- every slot of its group is taken: it waits in state queued ("resuming" set) until a slot
-- frees; then resume.lua reopens it (the nodes it had not finished are sent again). Asking
-- again while it waits answers the same. Nothing of its nodes is touched here.
--
-- KEYS[1] K.run      run record          (hash)
-- KEYS[5] K.done     completion signal   (list; emptied, waiters block again)
-- (KEYS[1..8] are the run's keys, lib/run.lua; the others are not touched here)
-- ARGV[1] run ttl (seconds)
--
-- Returns 1 when the run waits now, or an error reply when it is not resumable.
-- @include "clock"
-- @include "run"
local run_ttl = ARGV[1]

local status = redis.call('HGET', K.run, 'status')
if status == 'queued' and redis.call('HGET', K.run, 'resuming') then
  return 1
end
if status ~= 'failed' and status ~= 'cancelled' then
  return redis.error_reply('not resumable: run is ' .. tostring(status))
end
local _, nowstr = server_clock()
redis.call('HSET', K.run, 'status', 'queued', 'resuming', nowstr)
redis.call('HDEL', K.run, 'error', 'finished', 'deadline', 'unsent', 'continued',
           'outcome', 'steps', 'step', 'ended')
redis.call('DEL', K.done)
expire_keys(RUN_KEYS, run_ttl)
return 1
