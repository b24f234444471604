-- trace.lua: keep the trace context of an attempt that began without begin.lua (an eager
-- successor begun by complete_begin.lua as its predecessor completed, before anything
-- could know its trace context), as "<field>:trace" in K.nodes, for the span links of
-- the joins downstream. Only while the run runs and the attempt runs: a late write never
-- re-creates an expired key.
--
-- KEYS[1] K.run      run record          (hash)
-- KEYS[3] K.nodes    run node state      (hash: "<field>:state", "<field>:trace", ...)
-- (KEYS[1..8] are the run's keys, lib/run.lua; the others are not touched here)
-- ARGV[1] field: the node id
-- ARGV[2] the attempt's trace context (a W3C traceparent)
--
-- Returns 1 when kept, else 0.
-- @include "run"
local field, trace = ARGV[1], ARGV[2]

if redis.call('HGET', K.run, 'status') ~= 'running'
    or redis.call('HGET', K.nodes, field .. ':state') ~= 'running' then
  return 0
end
redis.call('HSET', K.nodes, field .. ':trace', trace)
return 1
