-- continue.lua: claim, or mark done, the continuation of a Celery canvas that a run sits
-- in (the next chain step, callbacks), so it happens once after the run ends even when
-- the process that ended the run dies first: the reconciler claims it then.
--
-- KEYS[1] K.run      run record          (hash: "continuation" = the canvas request,
--                                         "continued" = progress)
-- (KEYS[1..8] are the run's keys, lib/run.lua; the others are not touched here)
-- ARGV[1] "claim" or "done"
-- ARGV[2] how long a claim holds (seconds)
--
-- Returns a Continuation: CLAIMED (go ahead), BUSY (another process holds a live claim),
-- DONE (continued already) or NONE (no canvas waits on this run).
-- @include "clock"
-- @include "run"
local mode, hold = ARGV[1], tonumber(ARGV[2])

local Continuation = {CLAIMED = 'claimed', BUSY = 'busy', DONE = 'done', NONE = 'none'}

if redis.call('HEXISTS', K.run, 'continuation') == 0 then
  return Continuation.NONE
end
local progress = redis.call('HGET', K.run, 'continued')
if progress == 'done' then
  return Continuation.DONE
end
if mode == 'done' then
  redis.call('HSET', K.run, 'continued', 'done')
  return Continuation.DONE
end
local now = server_clock()
if progress then
  local until_ = tonumber(string.match(progress, '^claimed:(.+)$'))
  if until_ and now < until_ then
    return Continuation.BUSY
  end
end
redis.call('HSET', K.run, 'continued', 'claimed:' .. string.format('%.6f', now + hold))
return Continuation.CLAIMED
