-- after.lua: a step that follows the end of a run's graph (a compensation, the failure
-- handler, the exit handler: lib/run.lua) ended. Records its end, then releases the next
-- step, or closes the run as its outcome when it was the last. A step that fails is
-- recorded (its error on the node, its id in the run record's "after_failed") and the
-- next one still runs; it changes neither the outcome nor the run's error.
--
-- KEYS[1] K.run      run record          (hash)
-- KEYS[2] K.results  run results         (hash: the step's result)
-- KEYS[3] K.nodes    run node state      (hash)
-- KEYS[4] K.sinks    finished sinks      (set)
-- KEYS[5] K.done     completion signal   (list)
-- KEYS[6] K.state    run shared state    (hash; only expired here)
-- KEYS[7] K.leases   running leases      (zset)
-- KEYS[8] K.queued   queued leases       (zset)
-- ARGV[1] the step's id
-- ARGV[2] how it ended, a StepEnd: "ok" or "failed"
-- ARGV[3] its result (JSON) when "ok", its error record (JSON) when "failed"
-- ARGV[4] result ttl (seconds): how long a finished run is kept
--
-- Returns {After.NEXT, next step} when the next step is released (the caller publishes
-- it), {After.CLOSED} when this ended the run, {After.STALE} when the step is not the
-- run's current one (a late copy: nothing changes).
-- @include "clock"
-- @include "run"
-- @include "node_record"
local step, how, payload, result_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local After = {NEXT = 'next', CLOSED = 'closed', STALE = 'stale'}
local StepEnd = {OK = 'ok', FAILED = 'failed'}

if current_step() ~= step then
  return {After.STALE}
end
local _, nowstr = server_clock()
if how == StepEnd.OK then
  redis.call('HSET', K.results, step, payload)
  redis.call('HSET', K.nodes, step .. ':state', 'succeeded')
else
  redis.call('HSET', K.nodes, step .. ':state', 'failed', step .. ':error', payload)
  local failed = redis.call('HGET', K.run, 'after_failed')
  redis.call('HSET', K.run, 'after_failed', failed and (failed .. ',' .. step) or step)
end
record_finished(step, nowstr)
redis.call('ZREM', K.leases, step)
redis.call('ZREM', K.queued, step)
local steps = cjson.decode(redis.call('HGET', K.run, 'steps'))
local i = tonumber(redis.call('HGET', K.run, 'step')) + 1
if steps[i] then
  redis.call('HSET', K.run, 'step', i)
  release_step(steps[i], nowstr)
  return {After.NEXT, steps[i]}
end
close_run(redis.call('HGET', K.run, 'outcome'), nowstr, '', result_ttl)
return {After.CLOSED}
