-- begin.lua: a worker starts a node (or a unit of a map: an item or a chunk). Reads what
-- the node needs in one round trip and records the attempt with a running lease, but only
-- while the run is still running (so a late duplicate of a finished run's message never
-- re-creates an expired key). The worker renews the lease while the node runs (lease.lua);
-- a lease that runs out means the worker died, and the reconciler publishes the node
-- again (reclaim.lua counts the lost worker there, and only there).
--
-- One live execution per node (DESIGN.md, invariant 11): a copy of the message that finds
-- the node running (a broker restoring an unacked message past its visibility timeout, a
-- copy the reconciler sent, a message handed back) runs nothing and counts nothing, whether
-- the running lease is alive or ran out: the holder is alive, or the reconciler sends the
-- node again once its lease has run out. Only the attempt that holds the node may hand it
-- over to a message it sent itself (a retry, a message sent again after an
-- infrastructure error): ARGV[6] names that attempt. A message ahead of the graph state
-- (its node not released, or an upstream node unfinished: the write that released it was
-- lost with the graph Redis's data) runs nothing either; the node is published when the
-- state releases it.
--
-- KEYS[1] K.run      run record          (hash)
-- KEYS[2] K.results  run results         (hash: node id or "<node>#<i>" -> JSON result)
-- KEYS[3] K.nodes    run node state      (hash: "<field>:state", "<field>:run" attempts|
--                                         started|finished|worker, "<field>:queued",
--                                         "<field>:trace", ...)
-- KEYS[7] K.leases   running leases      (zset: field -> lease expiry, server time)
-- KEYS[8] K.queued   queued leases       (zset: field -> lease expiry; the field leaves it)
-- (KEYS[1..8] are the run's keys, lib/run.lua; the others are not touched here)
-- ARGV[1] field: the node id, "<node>#<i>" for item i of a map, "<node>@<j>" for chunk j
-- ARGV[2] worker hostname
-- ARGV[3] running lease (seconds)
-- ARGV[4] run ttl (seconds)
-- ARGV[5] "map" for the message of a map node itself (it expands into items), else ""
-- ARGV[6] the attempt that sent this message and hands the node over to it, or ""
-- ARGV[7] this attempt's trace context (a W3C traceparent), kept as "<field>:trace" in
--         K.nodes for the span links of the joins downstream; "" keeps none
-- ARGV[8] "" when no tracer or error reporter watches the node; else the number L of
--         predecessor ids that follow, whose kept trace contexts to answer (a join's)
-- ARGV[9 .. 8+L] those predecessor ids
-- ARGV[9+L ..] ids of the upstream nodes whose results the node reads
--
-- A finishing run (its handlers and compensations run: lib/run.lua) begins its current
-- step only, as if it were running.
--
-- Returns {status} when the run is not running (its status, or nil when it is gone);
-- {Begin.DEADLINE} when the run's deadline (field "deadline" of the run record, server
-- time) has passed; {Begin.DONE} when the node already ended without a result (failed
-- under a group policy, skipped) or the map was expanded already; {Begin.BUSY, worker,
-- attempt, lease expiry or ""} when another attempt holds the node (running);
-- {Begin.UNRELEASED, upstream id or ""} when the state has not released the node (the
-- id: an upstream node not finished); {Begin.RUNNING, inputs JSON, own result} when the
-- result is stored (the caller must not call the function again); else {Begin.RUNNING,
-- inputs JSON, false, attempt number, upstream result or false ..., queue wait}: the
-- queue wait is the seconds since the node was sent (server time), or "" when unknown.
-- When ARGV[8] is not "", every answer ends with one more element, what the watchers
-- show: {the run's flow name or false, each predecessor's trace context or false ...}.
-- @include "clock"
-- @include "run"
-- @include "node_record"
-- @include "counts"
local field, worker, running_lease, run_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local expands, handover = ARGV[5] == 'map', ARGV[6]
local trace, watched = ARGV[7], ARGV[8] ~= ''
local FIRST_LINK = 9
local links = watched and tonumber(ARGV[8]) or 0
local FIRST_UPSTREAM = FIRST_LINK + links

local Begin = {RUNNING = 'running', DEADLINE = 'deadline', DONE = 'done', BUSY = 'busy',
               UNRELEASED = 'unreleased'}

-- the run record's fields, the results and the node's state, each in one read
local run = redis.call('HMGET', K.run, 'status', 'deadline', 'inputs', 'flow')
local status, inputs = run[1], run[3]

-- ``out``, and what the watchers show when the node is watched (ARGV[8])
local function answer(out)
  if watched then
    local shown = {run[4]}
    for i = FIRST_LINK, FIRST_UPSTREAM - 1 do
      shown[#shown + 1] = redis.call('HGET', K.nodes, ARGV[i] .. ':trace')
    end
    out[#out + 1] = shown
  end
  return out
end

-- a finishing run runs its current step only (lib/run.lua), deadline or not
local step = status == 'finishing' and current_step() == field
if step then
  status = Begin.RUNNING
end
if status ~= Begin.RUNNING then
  return answer({status})
end
local now, nowstr = server_clock()
if not step and run[2] and now > tonumber(run[2]) then
  return answer({Begin.DEADLINE})
end
local wanted = {field}
for i = FIRST_UPSTREAM, #ARGV do
  wanted[#wanted + 1] = ARGV[i]
end
local results = redis.call('HMGET', K.results, unpack(wanted))
local own = results[1]
if own then
  return answer({status, inputs, own})
end
-- (with the counts a start moves: lib/counts.lua)
local MOVED = {'queued', 'retrying', 'running'}
local node = redis.call('HMGET', K.nodes, unpack(count_fields(
  {field .. ':state', record_field(field), field .. ':items', field .. ':queued',
   field .. ':sent'}, MOVED)))
counts_read(MOVED, node, 6)
local state = node[1]
if state == 'failed' or state == 'skipped' or state == 'skipping'
    or (expands and node[3]) then
  return answer({Begin.DONE})
end
-- released: a node has a state from its release on; a unit of a map, once its map node
-- expanded (a unit's own state starts with its first attempt)
local map_node = string.match(field, '^(.+)[#@]%d+$')
if not state and not (map_node and redis.call('HEXISTS', K.nodes, map_node .. ':items') == 1) then
  return answer({Begin.UNRELEASED, ''})
end
local record = parse_record(node[2])
if state == 'running' and record.attempts ~= handover then
  return answer({Begin.BUSY, record.worker, record.attempts,
                 redis.call('ZSCORE', K.leases, field) or ''})
end
local upstream = {}
for i = FIRST_UPSTREAM, #ARGV do
  local result = results[i - FIRST_UPSTREAM + 2]
  if not result then
    -- none stored: it ended without one (a skip, a failure its group tolerates), or the
    -- state is behind this message
    local up = redis.call('HGET', K.nodes, ARGV[i] .. ':state')
    if up ~= 'skipped' and up ~= 'skipping' and up ~= 'failed' and up ~= 'succeeded' then
      return answer({Begin.UNRELEASED, ARGV[i]})
    end
  end
  upstream[#upstream + 1] = result
end
local attempt = tonumber(record.attempts) + 1
local started = {attempts = attempt, started = nowstr, finished = '', worker = worker}
-- (its "<field>:queued" time stays: when it was last released or sent again; "<field>:sent"
-- keeps it for this attempt, for its history and its queue wait)
local sent = node[4]
-- the attempt this one follows goes to the history as retried (attempt.lua adds why, when
-- its worker says so, maybe after this one began; the reconciler keeps a lost attempt
-- there before it sends the node again)
local previous = field .. ':history:' .. record.attempts
if attempt > 1 and redis.call('HEXISTS', K.nodes, previous) == 0 then
  redis.call('HSET', K.nodes, previous, cjson.encode({
    attempt = attempt - 1, worker = record.worker, queued = node[5] or '',
    started = record.started, finished = record.finished ~= '' and record.finished or nowstr,
    outcome = 'retried', error = '', traceback = ''}))
end
local writes = {field .. ':state', 'running', record_field(field), pack_record(started),
                field .. ':sent', sent or ''}
if trace ~= '' then
  writes[#writes + 1] = field .. ':trace'
  writes[#writes + 1] = trace
end
if not step then  -- a step after the graph is not counted
  count_move(field, state, 'running')
end
redis.call('HSET', K.nodes, unpack(counts_into(writes)))
redis.call('ZREM', K.queued, field)
-- the leases set may have emptied (Redis drops it): it takes the run's expiry again; the
-- node state was given it when the run started (or resumed) and keeps it
redis.call('ZADD', K.leases, now + tonumber(running_lease), field)
redis.call('EXPIRE', K.leases, run_ttl)
local out = {status, inputs, false, attempt}
for i = 1, #ARGV - FIRST_UPSTREAM + 1 do
  out[#out + 1] = upstream[i]
end
-- after the results: how long this attempt waited in its queue (seconds), or ""
out[#out + 1] = sent and sent ~= '' and string.format('%.6f', now - tonumber(sent)) or ''
return answer(out)
