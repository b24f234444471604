-- wait.lua: a worker reached a wait_for() node (begin.lua recorded the attempt). When the
-- run was signalled already (signal.lua kept the payload), answers the payload, which the
-- worker completes the node with; else the node waits: state "waiting" since the first
-- time the run reached it, no running lease (no worker holds it, nothing polls), and a
-- lease at that time plus the timeout when it has one, which the reconciler fails with
-- WaitTimeout (reclaim.lua's TIMEOUT).
--
-- KEYS[1] K.run      run record          (hash)
-- KEYS[3] K.nodes    run node state      (hash: "<node>:signal" the payload kept,
--                                         "<node>:waiting" since when it waits)
-- KEYS[7] K.leases   running leases      (zset: a waiting node's timeout, server time)
-- (KEYS[1..8] are the run's keys, lib/run.lua; the others are not touched here)
-- ARGV[1] the node's id
-- ARGV[2] its timeout (seconds), or "" for none
--
-- Returns {Wait.SIGNALLED, payload}, {Wait.WAITING} or {Wait.ENDED} (the run is not
-- running: nothing changed).
-- @include "clock"
-- @include "run"
-- @include "counts"
local node, timeout = ARGV[1], ARGV[2]

local Wait = {SIGNALLED = 'signalled', WAITING = 'waiting', ENDED = 'ended'}

if redis.call('HGET', K.run, 'status') ~= 'running' then
  return {Wait.ENDED}
end
local payload = redis.call('HGET', K.nodes, node .. ':signal')
if payload then
  return {Wait.SIGNALLED, payload}
end
local _, nowstr = server_clock()
redis.call('HSETNX', K.nodes, node .. ':waiting', nowstr)
set_state(node, redis.call('HGET', K.nodes, node .. ':state'), 'waiting')
redis.call('ZREM', K.leases, node)
if timeout ~= '' then
  local since = tonumber(redis.call('HGET', K.nodes, node .. ':waiting'))
  redis.call('ZADD', K.leases, since + tonumber(timeout), node)
end
return {Wait.WAITING}
