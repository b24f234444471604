-- attempt.lua: keep the latest attempt at a node (or at a unit of a map) in its history,
-- as it ends without a result: failed, retried, or lost with its worker. The attempt that
-- succeeds, or the one still running, is read from the node's record instead
-- (model/status.py), so the usual path costs nothing. Kept in the node state as
-- "<field>:history:<attempt>", so it lives and expires with the run; written once per
-- attempt (a second call for the same attempt changes nothing).
--
-- KEYS[1] K.run      run record          (hash)
-- KEYS[2] K.results  run results         (hash)
-- KEYS[3] K.nodes    run node state      (hash)
-- KEYS[4] K.sinks    finished sinks      (set)
-- KEYS[5] K.done     completion signal   (list)
-- KEYS[6] K.state    run shared state    (hash)
-- KEYS[7] K.leases   running leases      (zset)
-- KEYS[8] K.queued   queued leases       (zset)
-- ARGV[1] the result field ("<node>", "<node>#<i>", "<node>@<j>")
-- ARGV[2] the outcome: "failed", "retried" or "lost"
-- ARGV[3] error (JSON: type, message), or ""
-- ARGV[4] traceback, or ""
-- ARGV[5] the attempt's number, or "" for the latest (begin.lua already put an attempt
--         whose successor began in the history; this adds why it ended)
--
-- Returns 1 when the attempt was written, 0 when not: no attempt began, the run's state
-- is gone, a result is stored and the outcome is "failed" (a failing copy of a message
-- that succeeded), or this attempt's history says why it ended already.
-- @include "clock"
-- @include "run"
-- @include "node_record"
local field, outcome, error_json, traceback, number = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

if redis.call('EXISTS', K.nodes) == 0 then
  return 0
end
if outcome == 'failed' and redis.call('HEXISTS', K.results, field) == 1 then
  return 0  -- a failing copy of a message that succeeded (its retry may have, already)
end
local record = read_record(field)
if number == '' then
  number = record.attempts
end
if number == '0' or number == '' then
  return 0
end
local key = field .. ':history:' .. number
local raw = redis.call('HGET', K.nodes, key)
if raw then
  local entry = cjson.decode(raw)
  if entry.error ~= '' then
    return 0
  end
  entry.outcome, entry.error, entry.traceback = outcome, error_json, traceback
  redis.call('HSET', K.nodes, key, cjson.encode(entry))
  return 1
end
if number ~= record.attempts then
  return 0  -- neither the latest attempt nor one begin.lua kept
end
local _, nowstr = server_clock()
redis.call('HSET', K.nodes, key, cjson.encode({
  attempt = tonumber(number), worker = record.worker,
  queued = redis.call('HGET', K.nodes, field .. ':sent') or '',
  started = record.started, finished = record.finished ~= '' and record.finished or nowstr,
  outcome = outcome, error = error_json, traceback = traceback}))
return 1
