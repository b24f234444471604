-- finish.lua: end a run that is still running (or queued) as failed or cancelled, wake its waiters and
-- set the expiry of every key of the run. The first caller wins; later ones change nothing.
--
-- KEYS[1] K.run      run record          (hash)
-- KEYS[2] K.results  run results         (hash)
-- KEYS[3] K.nodes    run node state      (hash)
-- KEYS[4] K.sinks    finished sinks      (set)
-- KEYS[5] K.done     completion signal   (list)
-- KEYS[6] K.state    run shared state    (hash)
-- KEYS[7] K.leases   running leases      (zset)
-- KEYS[8] K.queued   queued leases       (zset)
-- (arrivals of joins and maps not released keep their own expiry, the run ttl at most)
-- ARGV[1] final status: "failed" or "cancelled"
-- ARGV[2] node id that caused it, or "" (cancel)
-- ARGV[3] error (JSON), or ""
-- ARGV[4] result ttl (seconds)
-- ARGV[5] the result field of the failing message ("<node>", "<node>#<i>", "<node>@<j>"),
--         or "": when a result is stored there or the field succeeded, the failure is a
--         failing copy of a message that succeeded, and is ignored
-- ARGV[6] "1" when the run failed before any message was sent (a retry of the submission
--         with the same idempotency key starts it afresh), else ""
--
-- Returns a Finish: ENDED when this call ended the run, ALREADY when it had ended,
-- IGNORED when the failure was ignored.
-- @include "clock"
-- @include "run"
-- @include "counts"
-- @include "node_record"
local final, node, error_json, result_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local guard, unsent = ARGV[5], ARGV[6] == '1'

local Finish = {ENDED = 1, ALREADY = 0, IGNORED = -1}

local status = redis.call('HGET', K.run, 'status')
if status ~= 'running' and status ~= 'queued' then  -- queued: waiting for a slot
  return Finish.ALREADY
end
-- (a chunk keeps no result of its own: its arrival marks it succeeded)
if guard ~= '' and (redis.call('HEXISTS', K.results, guard) == 1
    or redis.call('HGET', K.nodes, guard .. ':state') == 'succeeded') then
  return Finish.IGNORED
end
local _, nowstr = server_clock()
if unsent then
  redis.call('HSET', K.run, 'unsent', '1')
end
if node ~= '' then
  -- failed with the run, not tolerated by a group policy: a resume runs it again
  set_state(node, redis.call('HGET', K.nodes, node .. ':state'), 'failed',
            node .. ':unsettled', '1')
  record_finished(node, nowstr)
end
close_run(final, nowstr, error_json, result_ttl)
return Finish.ENDED
