-- shared.lua: write to a run's shared state (RunContext) atomically. The shared state
-- never outlives its run: a write to a run whose record is gone is refused, and the key
-- expires with the run record (a node still running after a cancel cannot extend it).
--
-- KEYS[1] K.run      run record          (hash)
-- KEYS[6] K.state    run shared state    (hash: "v:<key>" value, "n:<key>" list length,
--                                         "l:<key>:<i>" list item; all JSON)
-- (KEYS[1..8] are the run's keys, lib/run.lua; the others are not touched here)
-- ARGV[1] operation: "set", "incr", "incrbyfloat" or "append"
-- ARGV[2] key
-- ARGV[3] value (JSON) or amount
--
-- Returns the new value (incr, incrbyfloat), the new list length (append) or 1 (set);
-- an error when the run is gone.
-- @include "run"
local op, key, value = ARGV[1], ARGV[2], ARGV[3]

local ttl = redis.call('PTTL', K.run)
if ttl == -2 then
  return redis.error_reply('run gone: its state expired')
end
local out = 1
if op == 'set' then
  redis.call('HSET', K.state, 'v:' .. key, value)
elseif op == 'incr' then
  out = redis.call('HINCRBY', K.state, 'v:' .. key, value)
elseif op == 'incrbyfloat' then
  out = redis.call('HINCRBYFLOAT', K.state, 'v:' .. key, value)
elseif op == 'append' then
  out = redis.call('HINCRBY', K.state, 'n:' .. key, 1)
  redis.call('HSET', K.state, 'l:' .. key .. ':' .. out, value)
else
  return redis.error_reply('unknown operation ' .. op)
end
if ttl > 0 then
  redis.call('PEXPIRE', K.state, ttl)
end
return out
