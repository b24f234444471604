-- lease.lua: set the leases of some fields of a running run.
--
--   "renew"      the worker running them is alive: running leases that exist are moved
--   "requeue"    they wait for a retry (state "retrying") until a queued lease runs out;
--                only while the attempt that asked for it is the latest (a retry
--                delivered and finished before the old attempt reported is left alone)
--   "redeliver"  the reconciler publishes them again: counted, back to "queued"
--   "release"    a worker hands them back to the broker as it stops (a cold shutdown):
--                back to "queued" with a queued lease, so the handed-back message runs at
--                once wherever it is delivered; only those whose latest attempt is that
--                worker's and still running
--
-- KEYS[1] K.run      run record          (hash)
-- KEYS[3] K.nodes    run node state      (hash)
-- KEYS[7] K.leases   running leases      (zset: field -> lease expiry, server time)
-- KEYS[8] K.queued   queued leases       (zset: field -> lease expiry, server time)
-- (KEYS[1..8] are the run's keys, lib/run.lua; the others are not touched here)
-- ARGV[1] mode, a Mode
-- ARGV[2] lease length (seconds from now)
-- ARGV[3] for "requeue": the attempt number that retries (begin.lua counted it); for
--         "release": the worker's hostname; else ""
-- ARGV[4 ..] fields
--
-- Returns the number of leases set; 0 when the run is not running (but for "renew").
-- @include "clock"
-- @include "run"
-- @include "counts"
-- @include "node_record"
local mode, seconds, who = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local FIRST_FIELD = 4

local Mode = {RENEW = 'renew', REQUEUE = 'requeue', REDELIVER = 'redeliver',
              RELEASE = 'release'}

local status = redis.call('HGET', K.run, 'status')
-- a node still running after its run was cancelled or failed keeps renewing its lease
-- (XX: only leases that exist move, so nothing is re-created): a resume then leaves it to
-- finish instead of sending it a second time
-- a finishing run (its handlers and compensations run) sets the leases of its current
-- step only
local step = status == 'finishing' and current_step()
if status ~= 'running' and not step and not (status and mode == Mode.RENEW) then
  return 0
end
local now, nowstr = server_clock()
local expiry = now + seconds
local set = 0
-- a state change: counted for a graph node, not for the step after the graph
local function move(field, old, new, ...)
  if step then
    set_step_state(field, new, ...)
  else
    set_state(field, old, new, ...)
  end
end
for i = FIRST_FIELD, #ARGV do
  local field = ARGV[i]
  if step and field ~= step and mode ~= Mode.RENEW then
    -- not the current step of a finishing run: left as it is
  elseif mode == Mode.RENEW then
    set = set + redis.call('ZADD', K.leases, 'XX', 'CH', expiry, field)
  elseif mode == Mode.REQUEUE then
    if redis.call('HGET', K.nodes, field .. ':state') == 'running'
        and read_record(field).attempts == who then
      redis.call('ZREM', K.leases, field)
      redis.call('ZADD', K.queued, expiry, field)
      -- sent again now (Celery's retry): its next attempt's queue wait counts from here
      move(field, 'running', 'retrying', field .. ':queued', nowstr)
      set = set + 1
    end
  elseif mode == Mode.REDELIVER then
    redis.call('ZREM', K.leases, field)
    redis.call('ZADD', K.queued, expiry, field)
    redis.call('HINCRBY', K.nodes, field .. ':redelivered', 1)
    local state = redis.call('HGET', K.nodes, field .. ':state')
    if state == 'running' or state == 'retrying' then
      move(field, state, 'queued', field .. ':queued', nowstr)
    else
      redis.call('HSET', K.nodes, field .. ':queued', nowstr)
    end
    set = set + 1
  elseif mode == Mode.RELEASE then
    if redis.call('HGET', K.nodes, field .. ':state') == 'running'
        and read_record(field).worker == who then
      redis.call('ZREM', K.leases, field)
      redis.call('ZADD', K.queued, expiry, field)
      move(field, 'running', 'queued', field .. ':queued', nowstr)
      set = set + 1
    end
  end
end
-- a leases set emptied earlier (Redis drops an empty zset) comes back without an expiry:
-- give it the run's, so it never outlives the run
adopt_run_ttl({K.leases, K.queued})
return set
