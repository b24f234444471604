-- begin.lua: a worker starts a node (or an item of a map). Reads what the node needs in
-- one round trip and records the attempt with a running lease, but only while the run is
-- still running (so a late duplicate of a finished run's message never re-creates an
-- expired key). The worker renews the lease while the node runs (lease.lua); a lease
-- that runs out means the worker died, and the reconciler publishes the node again.
--
-- KEYS[1] K.run      run record          (hash)
-- KEYS[2] K.results  run results         (hash: node id or "<node>#<i>" -> JSON result)
-- KEYS[3] K.nodes    run node state      (hash: "<field>:state", "<field>:run" attempts|
--                                         started|finished|worker, "<field>:queued",
--                                         "<field>:trace", ...)
-- KEYS[7] K.leases   running leases      (zset: field -> lease expiry, server time)
-- KEYS[8] K.queued   queued leases       (zset: field -> lease expiry; the field leaves it)
-- (KEYS[1..8] are the run's keys, lib/run.lua; the others are not touched here)
-- ARGV[1] field: the node id, or "<node>#<i>" for item i of a map
-- ARGV[2] worker hostname
-- ARGV[3] running lease (seconds)
-- ARGV[4] run ttl (seconds)
-- ARGV[5] "map" for the message of a map node itself (it expands into items), else ""
-- ARGV[6] how many times a node may lose its worker (graph_max_lost)
-- ARGV[7] this attempt's trace context (a W3C traceparent), kept as "<field>:trace" in
--         K.nodes for the span links of the joins downstream; "" keeps none
-- ARGV[8] "" when no tracer or error reporter watches the node; else the number L of
--         predecessor ids that follow, whose kept trace contexts to answer (a join's)
-- ARGV[9 .. 8+L] those predecessor ids
-- ARGV[9+L ..] ids of the upstream nodes whose results the node reads
--
-- Returns {status} when the run is not running (its status, or nil when it is gone);
-- {Begin.DEADLINE} when the run's deadline (field "deadline" of the run record, server
-- time) has passed; {Begin.POISON, times, last worker} when the node's previous attempts
-- died in their workers (each found the node still "running") more than ARGV[6] times;
-- {Begin.DONE} when the node already ended without a result (failed under a group
-- policy, skipped) or the map was expanded already; {Begin.RUNNING, inputs JSON, own
-- result} when the result is stored (the caller must not call the function again); else
-- {Begin.RUNNING, inputs JSON, false, attempt number, upstream result or false ...}.
-- When ARGV[8] is not "", every answer ends with one more element, what the watchers
-- show: {the run's flow name or false, each predecessor's trace context or false ...}.
-- @include "clock"
-- @include "run"
-- @include "node_record"
local field, worker, running_lease, run_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local expands, max_lost = ARGV[5] == 'map', tonumber(ARGV[6])
local trace, watched = ARGV[7], ARGV[8] ~= ''
local FIRST_LINK = 9
local links = watched and tonumber(ARGV[8]) or 0
local FIRST_UPSTREAM = FIRST_LINK + links

local Begin = {RUNNING = 'running', DEADLINE = 'deadline', POISON = 'poison', DONE = 'done'}

-- ``out``, and what the watchers show when the node is watched (ARGV[8])
local function answer(out)
  if watched then
    local shown = {redis.call('HGET', K.run, 'flow')}
    for i = FIRST_LINK, FIRST_UPSTREAM - 1 do
      shown[#shown + 1] = redis.call('HGET', K.nodes, ARGV[i] .. ':trace')
    end
    out[#out + 1] = shown
  end
  return out
end

local status = redis.call('HGET', K.run, 'status')
if status ~= Begin.RUNNING then
  return answer({status})
end
local now, nowstr = server_clock()
if past_deadline(now) then
  return answer({Begin.DEADLINE})
end
local own = redis.call('HGET', K.results, field)
local inputs = redis.call('HGET', K.run, 'inputs')
if own then
  return answer({status, inputs, own})
end
local state = redis.call('HGET', K.nodes, field .. ':state')
if state == 'failed' or state == 'skipped' or state == 'skipping'
    or (expands and redis.call('HEXISTS', K.nodes, field .. ':items') == 1) then
  return answer({Begin.DONE})
end
local record = read_record(field)
if state == 'running' then
  -- the previous attempt never ended: its worker died (a crash, an OOM kill, a pool
  -- process lost), and Celery or the broker delivered the message again
  local lost = redis.call('HINCRBY', K.nodes, field .. ':lost', 1)
  if lost > max_lost then
    return answer({Begin.POISON, lost, record.worker})
  end
end
local attempt = tonumber(record.attempts) + 1
local started = {attempts = attempt, started = nowstr, finished = '', worker = worker}
redis.call('HSET', K.nodes, field .. ':state', 'running',
           record_field(field), pack_record(started))
redis.call('HDEL', K.nodes, field .. ':queued')
redis.call('ZREM', K.queued, field)
if trace ~= '' then
  redis.call('HSET', K.nodes, field .. ':trace', trace)
end
redis.call('ZADD', K.leases, now + tonumber(running_lease), field)
redis.call('EXPIRE', K.nodes, run_ttl)
redis.call('EXPIRE', K.leases, run_ttl)
local out = {status, inputs, false, attempt}
for i = FIRST_UPSTREAM, #ARGV do
  out[#out + 1] = redis.call('HGET', K.results, ARGV[i])
end
return answer(out)
