-- child.lua: node ARGV[1] of a run started child run ARGV[2] (child(flow) returned by the
-- node). Records the child on the node ("<node>:child", for the links both ways and
-- cancel), and unless the node ended already (a child quicker than this call: its end
-- completed the node), the node waits for the child: state "child", no running lease, so
-- no worker holds it and the reconciler does not look at it; the child's end completes it.
--
-- KEYS[1] K.run      run record          (hash: "child:<node>" -> the child run, too)
-- KEYS[3] K.nodes    run node state      (hash: "<node>:child" = the child run id)
-- KEYS[7] K.leases   running leases      (zset)
-- (KEYS[1..8] are the run's keys, lib/run.lua; the others are not touched here)
-- ARGV[1] node id
-- ARGV[2] child run id
--
-- Returns a ChildMark: WAITING (the node waits for the child), DONE (the node ended
-- already) or NOT_RUNNING (the run is not running: only the child is recorded).
-- @include "run"
-- @include "counts"
local node, child = ARGV[1], ARGV[2]

local ChildMark = {WAITING = 'waiting', DONE = 'done', NOT_RUNNING = 'not_running'}

redis.call('HSET', K.nodes, node .. ':child', child)
adopt_run_ttl({K.nodes})
local status = redis.call('HGET', K.run, 'status')
if status then
  -- in the run record too ("child:<node>"), where a summary reads the run's children
  redis.call('HSET', K.run, 'child:' .. node, child)
end
if status ~= 'running' then
  return ChildMark.NOT_RUNNING
end
if redis.call('HGET', K.nodes, node .. ':state') ~= 'running' then
  return ChildMark.DONE
end
set_state(node, 'running', 'child')
redis.call('ZREM', K.leases, node)
return ChildMark.WAITING
