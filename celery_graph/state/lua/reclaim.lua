-- reclaim.lua: the reconciler's look at one run. Finds the leases that ran out (a node
-- whose worker died, a message the broker lost, a skip nobody passed on) and says what
-- each one needs; the caller publishes again (lease.lua "redeliver" first), or leaves a
-- queued node waiting while its queue is busy or a live worker holds its message (nothing
-- is written then: the same lease comes back at the next look).
--
-- A running lease that ran out is the one place a lost worker is counted (begin.lua runs
-- nothing on a running node). After an outage of the reconciler's own (the graph Redis
-- away: renewals failed too), the caller passes a hold (ARGV[3]): until then a running
-- lease that ran out is extended to it instead, so a worker that is alive renews it.
--
-- KEYS[1] K.run      run record          (hash)
-- KEYS[3] K.nodes    run node state      (hash)
-- KEYS[7] K.leases   running leases      (zset: field -> lease expiry, server time)
-- KEYS[8] K.queued   queued leases       (zset: field -> lease expiry, server time)
-- (KEYS[1..8] are the run's keys, lib/run.lua; the others are not touched here)
-- ARGV[1] how many times a node may lose its worker before the run fails
-- ARGV[2] at most this many leases of each kind per call
-- ARGV[3] hold: server time until which running leases that ran out are extended to it
--         rather than reclaimed (the reconciler's outage), or ""
--
-- Returns one of (a Verdict first)
--   {GONE}                            no run record (expired, or never created)
--   {ENDED, pending}                  the run ended; pending is 1 while a Celery canvas
--                                     still waits for its continuation
--   {DEADLINE}                        running (or queued) past its deadline
--   {QUEUED, deadline}                waiting for a slot of its flow's concurrency limit
--                                     (nothing of it to reclaim); deadline: server time,
--                                     or "" for none
--   {POISON, field, lost, worker}     a node lost its worker more than ARGV[1] times
--   {OK, now, next running, next queued, held, n, field, kind, queued, ... (n triples)}
--       kind, an Expiry: LOST (running, its worker stopped renewing), QUEUED (published,
--       or waiting for a retry, and never started), SKIP (a skip to pass on), MAP (a map
--       node whose units all arrived, not completed), TIMEOUT (a wait_for() node not
--       signalled within its timeout); queued: when the node (an item: its
--       map node) was last published, or ""; next running / next queued: the earliest
--       lease of each kind left, or "" when there is none; held: how many running
--       leases the hold extended.
-- @include "clock"
-- @include "run"
-- @include "node_record"
local max_lost, limit, hold = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])

local Verdict = {GONE = 'gone', ENDED = 'ended', DEADLINE = 'deadline', POISON = 'poison',
                 OK = 'ok', QUEUED = 'queued'}
local Expiry = {LOST = 'lost', QUEUED = 'queued', SKIP = 'skip', MAP = 'map',
                TIMEOUT = 'timeout'}

local status = redis.call('HGET', K.run, 'status')
if not status then
  return {Verdict.GONE}
end
if status == 'queued' then
  local now = server_clock()
  if past_deadline(now) then
    return {Verdict.DEADLINE}
  end
  return {Verdict.QUEUED, redis.call('HGET', K.run, 'deadline') or ''}
end
-- a finishing run (its handlers and compensations run) is looked after for its current
-- step only: the leases of other nodes that ran out are dropped
local step = status == 'finishing' and current_step()
if status ~= 'running' and not step then
  local pending = 0
  if redis.call('HEXISTS', K.run, 'continuation') == 1
      and redis.call('HGET', K.run, 'continued') ~= 'done' then
    pending = 1
  end
  return {Verdict.ENDED, pending}
end
local now, nowstr = server_clock()
if not step and past_deadline(now) then
  return {Verdict.DEADLINE}
end
local found = {}
local function add(field, kind)
  local node = string.match(field, '^([^#@]+)')
  found[#found + 1] = field
  found[#found + 1] = kind
  found[#found + 1] = redis.call('HGET', K.nodes, field .. ':queued')
                      or redis.call('HGET', K.nodes, node .. ':queued') or ''
end
local function ended(state)
  return state == 'succeeded' or state == 'failed' or state == 'skipped'
         or state == 'mapping'
end
local held = 0
local ran_out = redis.call('ZRANGEBYSCORE', K.leases, '-inf', now, 'LIMIT', 0, limit)
for _, field in ipairs(ran_out) do
  local state = redis.call('HGET', K.nodes, field .. ':state')
  if step and field ~= step then
    redis.call('ZREM', K.leases, field)
  elseif state == 'mapping' then
    add(field, Expiry.MAP)  -- its last unit's arrival leased it (map_arrive.lua)
  elseif ended(state) then
    redis.call('ZREM', K.leases, field)  -- the lease is stale
  elseif state == 'running' and hold and now < hold then
    -- renewals failed with the reconciler's own outage: not a sign of a dead worker
    redis.call('ZADD', K.leases, hold, field)
    held = held + 1
  elseif state == 'running' then
    local lost = redis.call('HINCRBY', K.nodes, field .. ':lost', 1)
    if lost > max_lost then
      return {Verdict.POISON, field, lost, read_record(field).worker}
    end
    add(field, Expiry.LOST)
  elseif state == 'skipping' then
    add(field, Expiry.SKIP)
  elseif state == 'waiting' then
    add(field, Expiry.TIMEOUT)  -- a wait_for() node's timeout (wait.lua)
  else
    add(field, Expiry.QUEUED)
  end
end
ran_out = redis.call('ZRANGEBYSCORE', K.queued, '-inf', now, 'LIMIT', 0, limit)
for _, field in ipairs(ran_out) do
  if (step and field ~= step) or ended(redis.call('HGET', K.nodes, field .. ':state')) then
    redis.call('ZREM', K.queued, field)
  else
    add(field, Expiry.QUEUED)
  end
end
local running = redis.call('ZRANGE', K.leases, 0, 0, 'WITHSCORES')[2] or ''
local queued = redis.call('ZRANGE', K.queued, 0, 0, 'WITHSCORES')[2] or ''
local out = {Verdict.OK, nowstr, running, queued, held, #found / 3}
for _, v in ipairs(found) do
  out[#out + 1] = v
end
return out
