-- resume.lua: reopen a failed or cancelled run so the nodes it had not finished run again;
-- results already stored are kept. The caller computes, from each node's state, which
-- nodes and map items to send again (unfinished, every predecessor done, not running
-- under a live lease); this resets their markers and gives each a lease before the
-- caller publishes them, so a publish that fails is recovered by the reconciler. Each
-- resume starts a new epoch of the run ("epoch" in the run record): every message sent
-- from then on carries a task id ending in "~<epoch>", so a revoke of an earlier task id,
-- which Celery's workers keep for hours, never discards it (revoke.lua calls it stale).
-- A run park.lua left queued for a slot of its flow's concurrency limit reopens the same
-- way, once it holds one.
--
-- KEYS[1] K.run      run record          (hash: "epoch" counts the resumes)
-- KEYS[2] K.results  run results         (hash)
-- KEYS[3] K.nodes    run node state      (hash)
-- KEYS[4] K.sinks    finished sinks      (set)
-- KEYS[5] K.done     completion signal   (list; emptied, waiters block again)
-- KEYS[6] K.state    run shared state    (hash)
-- KEYS[7] K.leases   running leases      (zset)
-- KEYS[8] K.queued   queued leases       (zset)
-- (all but the completion signal go back to the run ttl)
-- ARGV[1] run ttl (seconds)
-- ARGV[2] queued lease (seconds)
-- ARGV[3] N, the number of fields to send again
-- ARGV[4 .. 3+N] fields to send again: node ids, or "<node>#<i>" / "<node>@<j>" for items
--            or chunks of a map
-- ARGV[4+N ..] fields the caller found running: each whose running lease is gone by now
--            (it ended into the closed run: its result is kept, its arrival is not made)
--            is sent again too
--
-- Returns {the run's new epoch, the fields of ARGV[4+N ..] to send as well ...}, or
-- {err} when the run is not resumable.
-- @include "clock"
-- @include "run"
-- @include "counts"
local run_ttl, queued_lease, nfields = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local FIRST_FIELD = 4

local status = redis.call('HGET', K.run, 'status')
local parked = status == 'queued' and redis.call('HGET', K.run, 'resuming')
if status ~= 'failed' and status ~= 'cancelled' and not parked then
  return redis.error_reply('not resumable: run is ' .. tostring(status))
end
local now, nowstr = server_clock()
redis.call('HSET', K.run, 'status', 'running', 'resumed', nowstr)
redis.call('HDEL', K.run, 'resuming', 'error', 'finished', 'deadline', 'unsent', 'continued',
           'outcome', 'steps', 'step', 'ended')  -- the handlers run again at the next end
redis.call('DEL', K.done)
local epoch = redis.call('HINCRBY', K.run, 'epoch', 1)
local expiry = now + queued_lease
local function send(field)
  set_state(field, redis.call('HGET', K.nodes, field .. ':state'), 'queued',
            field .. ':queued', nowstr)
  -- (a wait_for() node sent again waits afresh: its timeout counts from then)
  redis.call('HDEL', K.nodes, field .. ':error', field .. ':unsettled', field .. ':lost',
             field .. ':waiting')
  redis.call('ZREM', K.leases, field)
  redis.call('ZADD', K.queued, expiry, field)
end
local first_watched = FIRST_FIELD + nfields
for i = FIRST_FIELD, first_watched - 1 do
  send(ARGV[i])
end
local late = {epoch}
for i = first_watched, #ARGV do
  if not redis.call('ZSCORE', K.leases, ARGV[i]) then
    send(ARGV[i])
    late[#late + 1] = ARGV[i]
  end
end
expire_keys({K.run, K.nodes, K.leases, K.results, K.sinks, K.state, K.queued}, run_ttl)
return late
