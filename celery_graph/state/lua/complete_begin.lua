-- complete_begin.lua: a sequential step of an eager chain in one call. A node succeeded
-- and its only successor will run next in the same worker process (executor/eager.py):
-- store the node's result and mark it succeeded, as complete.lua would, and release the
-- successor straight into running with this worker's running lease, as begin.lua would,
-- without the queued lease in between (nothing is published, so nothing waits in a
-- queue). Answers what begin.lua answers a node it starts, so the successor's task does
-- not call begin.lua.
--
-- It covers the usual case only, and writes nothing otherwise: the run is running and
-- before its deadline, the node is running with no unsettled mark or branch choice, and
-- the successor (one predecessor: this node) has no state and no attempt yet, and every
-- other upstream result it reads is stored. Anything else answers DECLINED, and the
-- caller takes the general path (complete.lua, then begin.lua for a kept successor).
--
-- Durability is the published node's: a process that dies after this call leaves the
-- successor running under a lease nobody renews; the reconciler sends it again when the
-- lease runs out (reclaim.lua), as for any running node whose worker died.
--
-- KEYS[1] K.run      run record          (hash)
-- KEYS[2] K.results  run results         (hash)
-- KEYS[3] K.nodes    run node state      (hash)
-- KEYS[7] K.leases   running leases      (zset: field -> lease expiry, server time)
-- (KEYS[1..8] are the run's keys, lib/run.lua; the others are not touched here)
-- ARGV[1] node id: the node that succeeded (its one successor is ARGV[4])
-- ARGV[2] its result (JSON)
-- ARGV[3] run ttl (seconds)
-- ARGV[4] successor id
-- ARGV[5] worker hostname (the successor's attempt is this worker's)
-- ARGV[6] running lease (seconds)
-- ARGV[7 ..] ids of the upstream nodes whose results the successor reads (ARGV[1] among
--            them or not)
--
-- Returns {Fused.DECLINED} (nothing written), or {Fused.BEGUN, inputs JSON, attempt
-- number, the run's flow name or false, upstream result ...}: the run inputs, the
-- successor's attempt (1) and the results of ARGV[7 ..], in that order.
-- @include "clock"
-- @include "run"
-- @include "node_record"
-- @include "counts"
local node, result, run_ttl = ARGV[1], ARGV[2], ARGV[3]
local succ, worker, running_lease = ARGV[4], ARGV[5], tonumber(ARGV[6])
local FIRST_UPSTREAM = 7

local Fused = {BEGUN = 'begun', DECLINED = 'declined'}

-- reads first: nothing is written unless the whole step is taken here
local run = redis.call('HMGET', K.run, 'status', 'deadline', 'inputs', 'flow')
if run[1] ~= 'running' then
  return {Fused.DECLINED}
end
local now, nowstr = server_clock()
if run[2] and now > tonumber(run[2]) then
  return {Fused.DECLINED}
end
-- (the one count this step moves: the node running -> succeeded, the successor none ->
-- running, so "#running" stays; lib/counts.lua)
local MOVED = {'succeeded'}
local seen = redis.call('HMGET', K.nodes, unpack(count_fields(
  {node .. ':state', record_field(node), node .. ':unsettled', node .. ':branch',
   succ .. ':state', record_field(succ)}, MOVED)))
counts_read(MOVED, seen, 7)
if seen[1] ~= 'running' or seen[3] or seen[4] or seen[5] or seen[6] then
  return {Fused.DECLINED}
end
-- the other results the successor reads (this node's is ARGV[2], or the one stored)
local others, at = {}, {}
for i = FIRST_UPSTREAM, #ARGV do
  if ARGV[i] ~= node then
    others[#others + 1] = ARGV[i]
    at[ARGV[i]] = #others
  end
end
local read = {}
if #others > 0 then
  read = redis.call('HMGET', K.results, unpack(others))
  for i = 1, #others do
    if not read[i] then
      return {Fused.DECLINED}  -- skipped, failed under a policy, or behind: begin.lua's
    end
  end
end

-- the node: its result stored once, succeeded (complete.lua's last part)
if redis.call('HSETNX', K.results, node, result) == 0 then
  result = redis.call('HGET', K.results, node)  -- an earlier copy's: results never change
end
redis.call('EXPIRE', K.results, run_ttl)
local done = parse_record(seen[2])
done.finished = nowstr
count_move(node, 'running', 'succeeded')
-- the successor: released and begun at once (its release time is its start: no queue wait)
count_move(succ, false, 'running')
local started = {attempts = '1', started = nowstr, finished = '', worker = worker}
redis.call('HSET', K.nodes, unpack(counts_into({
  node .. ':state', 'succeeded', record_field(node), pack_record(done),
  succ .. ':state', 'running', record_field(succ), pack_record(started),
  succ .. ':queued', nowstr, succ .. ':sent', nowstr})))
-- the successor's lease first: the set never empties, so it keeps the expiry it has; it
-- needs the run's again only if the node's lease was gone (released, or reclaimed)
redis.call('ZADD', K.leases, now + running_lease, succ)
if redis.call('ZREM', K.leases, node) == 0 then
  redis.call('EXPIRE', K.leases, run_ttl)
end
local out = {Fused.BEGUN, run[3], 1, run[4]}
for i = FIRST_UPSTREAM, #ARGV do
  out[#out + 1] = ARGV[i] == node and result or read[at[ARGV[i]]]
end
return out
