-- continue.lua: claim, or mark done, the continuation of a Celery canvas that a run sits
-- in (the next chain step, callbacks), so it happens once after the run ends even when
-- the process that ended the run dies first: the reconciler claims it then.
--
-- KEYS[1] run record (hash: "continuation" = the canvas request, "continued" = progress)
-- ARGV[1] "claim" or "done"
-- ARGV[2] how long a claim holds (seconds)
--
-- Returns "claimed" (go ahead), "busy" (another process holds a live claim), "done"
-- (continued already) or "none" (no canvas waits on this run).
if redis.call('HEXISTS', KEYS[1], 'continuation') == 0 then
  return 'none'
end
local progress = redis.call('HGET', KEYS[1], 'continued')
if progress == 'done' then
  return 'done'
end
if ARGV[1] == 'done' then
  redis.call('HSET', KEYS[1], 'continued', 'done')
  return 'done'
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if progress then
  local until_ = tonumber(string.match(progress, '^claimed:(.+)$'))
  if until_ and now < until_ then
    return 'busy'
  end
end
redis.call('HSET', KEYS[1], 'continued', 'claimed:' .. string.format('%.6f', now + tonumber(ARGV[2])))
return 'claimed'
