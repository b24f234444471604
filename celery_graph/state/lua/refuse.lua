-- refuse.lua: record a run that could not start (a run_graph message whose graph is gone
-- and cannot be rebuilt, a flow reference that does not import, invalid inputs...) as
-- failed, with the reason, so listings show it like any run. Once per run id: the id comes
-- from the message's task id, so a redelivered message finds the run and records nothing.
-- An unsent run (its submission failed before any message was sent) is recorded over.
--
-- KEYS[1] K.run      run record          (hash)
-- KEYS[2] K.results  run results         (hash; only expired here)
-- KEYS[3] K.nodes    node state          (hash; only expired here)
-- KEYS[4] K.sinks    finished sinks      (set; only expired here)
-- KEYS[5] K.done     completion signal   (list)
-- KEYS[6] K.state    run shared state    (hash; only expired here)
-- KEYS[7] K.leases   running leases      (zset; only expired here)
-- KEYS[8] K.queued   queued leases       (zset; only expired here)
-- ARGV[1] graph id, or "" when the message named none
-- ARGV[2] run inputs (JSON)
-- ARGV[3] error (JSON error record)
-- ARGV[4] result ttl (seconds)
-- ARGV[5] more fields of the run record (JSON object of strings)
--
-- Returns {1, now} when this call recorded the run, {0, status} when a run with this id
-- exists already.
-- @include "clock"
-- @include "run"
local graph, inputs, error_json, result_ttl, extra = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local status = redis.call('HGET', K.run, 'status')
if status then
  if not (status == 'failed' and redis.call('HGET', K.run, 'unsent') == '1') then
    return {0, status}
  end
  for i = 1, #RUN_KEYS do
    redis.call('DEL', RUN_KEYS[i])
  end
end
local _, nowstr = server_clock()
redis.call('HSET', K.run, 'graph', graph, 'inputs', inputs, 'created', nowstr, 'nodes', 0,
           'sinks', '[]', 'unstarted', '1')
for field, value in pairs(cjson.decode(extra)) do
  redis.call('HSET', K.run, field, value)
end
close_run('failed', nowstr, error_json, result_ttl)
return {1, nowstr}
