-- revoke.lua: a node message was revoked through Celery (control.revoke, AsyncResult.revoke,
-- Flower, `celery control revoke`, with or without terminate): end the run as cancelled,
-- naming the node, at once and once. Celery's workers discard every later message with
-- the revoked task id, so the run could never finish otherwise (the reconciler would send
-- the same id again and again).
--
-- A revoke is stale, and changes nothing, when the task id is of an earlier epoch than the
-- run's (the run was resumed since: its messages carry new task ids, see protocol.py), or
-- when the revoked unit of work already succeeded (Celery leaves a finished task alone).
--
-- KEYS[1] K.run      run record          (hash: "epoch", how many times it was resumed)
-- KEYS[2] K.results  run results         (hash)
-- KEYS[3] K.nodes    run node state      (hash)
-- KEYS[4] K.sinks    finished sinks      (set)
-- KEYS[5] K.done     completion signal   (list)
-- KEYS[6] K.state    run shared state    (hash)
-- KEYS[7] K.leases   running leases      (zset)
-- KEYS[8] K.queued   queued leases       (zset)
-- ARGV[1] the revoked field: a node id, "<node>#<i>" (an item), "<node>@<j>" (a chunk)
-- ARGV[2] the node id of that field
-- ARGV[3] the epoch in the revoked task id
-- ARGV[4] the error record (JSON) the cancelled run keeps
-- ARGV[5] result ttl (seconds)
--
-- Returns a Revoked: ENDED when this call cancelled the run, NOT_RUNNING when the run is
-- not running (or gone), STALE for a revoke of an earlier epoch, DONE when the field had
-- succeeded already.
-- @include "clock"
-- @include "run"
-- @include "counts"
-- @include "node_record"
local field, node, epoch = ARGV[1], ARGV[2], tonumber(ARGV[3])
local error_json, result_ttl = ARGV[4], ARGV[5]

local Revoked = {ENDED = 'ended', NOT_RUNNING = 'not-running', STALE = 'stale', DONE = 'done'}

if redis.call('HGET', K.run, 'status') ~= 'running' then
  return Revoked.NOT_RUNNING
end
if tonumber(redis.call('HGET', K.run, 'epoch') or '0') > epoch then
  return Revoked.STALE
end
local state = redis.call('HGET', K.nodes, field .. ':state')
if redis.call('HEXISTS', K.results, field) == 1 or state == 'succeeded' or state == 'skipped' then
  return Revoked.DONE
end
local _, nowstr = server_clock()
if state then
  -- released (queued or running): cancelled with the run, a resume sends it again (with
  -- a task id of the next epoch). A node not released yet keeps no state: its
  -- predecessors release it after a resume, as any other.
  -- (``field`` may be a unit of the map ``node``: the node's own state is what moves)
  local old = field == node and state or redis.call('HGET', K.nodes, node .. ':state')
  set_state(node, old, 'failed', node .. ':unsettled', '1', node .. ':error', error_json)
  record_finished(node, nowstr)
end
close_run('cancelled', nowstr, error_json, result_ttl)
return Revoked.ENDED
