-- signal.lua: deliver a signal to a wait_for() node of a run. The payload is kept on the
-- node ("<node>:signal"); a node that waits already is released again (queued, with a
-- queued lease) for the caller to publish: its worker finds the payload (wait.lua) and
-- completes the node with it. A node the run has not reached yet finds it there when it
-- does. One signal per wait.
--
-- KEYS[1] K.run      run record          (hash)
-- KEYS[2] K.results  run results         (hash)
-- KEYS[3] K.nodes    run node state      (hash)
-- KEYS[7] K.leases   running leases      (zset: the waiting node's timeout is dropped)
-- KEYS[8] K.queued   queued leases       (zset: the released node's lease)
-- (KEYS[1..8] are the run's keys, lib/run.lua; the others are not touched here)
-- ARGV[1] the wait node's id
-- ARGV[2] the payload (JSON)
-- ARGV[3] queued lease (seconds)
--
-- Returns {Signal.WOKEN} (the node waited: publish it), {Signal.KEPT} (kept until the
-- run reaches the node), {Signal.TAKEN} (the wait had its signal already), {Signal.ENDED,
-- status} (the run is not running) or {Signal.GONE} (no such run).
-- @include "clock"
-- @include "run"
-- @include "counts"
local node, payload, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])

local Signal = {WOKEN = 'woken', KEPT = 'kept', TAKEN = 'taken', ENDED = 'ended',
                GONE = 'gone'}

local status = redis.call('HGET', K.run, 'status')
if not status then
  return {Signal.GONE}
end
if status ~= 'running' then
  return {Signal.ENDED, status}
end
local state = redis.call('HGET', K.nodes, node .. ':state')
if redis.call('HEXISTS', K.nodes, node .. ':signal') == 1
    or redis.call('HEXISTS', K.results, node) == 1
    or state == 'succeeded' or state == 'failed' or state == 'skipped' then
  return {Signal.TAKEN}
end
local now, nowstr = server_clock()
redis.call('HSET', K.nodes, node .. ':signal', payload, node .. ':signalled', nowstr)
if state == 'waiting' then
  set_state(node, 'waiting', 'queued', node .. ':queued', nowstr)
  redis.call('ZREM', K.leases, node)
  redis.call('ZADD', K.queued, now + lease, node)
  return {Signal.WOKEN}
end
return {Signal.KEPT}
