-- start.lua: create a run, mark its roots published and give each root a lease, so a
-- root whose message never reaches a worker is published again by the reconciler.
-- The run id is derived from the idempotency key when there is one: a run that exists
-- already is returned as it is, unless its submission failed before anything was sent
-- ("unsent"), which a retry starts afresh.
--
-- KEYS[1] K.run      run record          (hash)
-- KEYS[2] K.results  run results         (hash; deleted when an unsent run starts afresh)
-- KEYS[3] K.nodes    node state          (hash: "<node>:<field>" -> value)
-- KEYS[4] K.sinks    finished sinks      (set; deleted as KEYS[2])
-- KEYS[5] K.done     completion signal   (list; deleted as KEYS[2])
-- KEYS[6] K.state    run shared state    (hash; deleted as KEYS[2])
-- KEYS[7] K.leases   running leases      (zset; deleted as KEYS[2])
-- KEYS[8] K.queued   queued leases       (zset: node -> lease expiry, server time)
-- KEYS[9 ..] arrivals of the run's joins (hash) and maps (set), deleted as KEYS[2]
-- ARGV[1] graph id
-- ARGV[2] run inputs (JSON)
-- ARGV[3] number of nodes
-- ARGV[4] sink ids (JSON list)
-- ARGV[5] deadline, seconds from now, or ""
-- ARGV[6] run ttl (seconds)
-- ARGV[7] queued lease (seconds)
-- ARGV[8] more fields of the run record (JSON object of strings)
-- ARGV[9] "1": the run waits for a slot of its flow's concurrency limit: created as
--         "queued", no root marked (admit.lua starts it), else ""
-- ARGV[10 ..] pairs: root id, its start delay in seconds
--
-- Returns {1, now} when this call created the run, {0, status} when it exists.
-- @include "clock"
-- @include "run"
-- @include "counts"
local graph, inputs, nnodes, sinks = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local deadline, run_ttl, lease, extra = ARGV[5], ARGV[6], tonumber(ARGV[7]), ARGV[8]
local waits = ARGV[9] == '1'
local FIRST_ROOT = 10

local status = redis.call('HGET', K.run, 'status')
if status then
  if not (status == 'failed' and redis.call('HGET', K.run, 'unsent') == '1') then
    return {0, status}
  end
  for i = 1, #KEYS do
    redis.call('DEL', KEYS[i])
  end
end
local now, nowstr = server_clock()
-- ("counted": the node counts of lib/counts.lua are kept from the start of this run)
redis.call('HSET', K.run, 'status', waits and 'queued' or 'running', 'graph', graph,
           'inputs', inputs, 'created', nowstr, 'nodes', nnodes, 'sinks', sinks,
           'counted', '1')
if deadline ~= '' then
  redis.call('HSET', K.run, 'deadline', string.format('%.6f', now + tonumber(deadline)))
end
for field, value in pairs(cjson.decode(extra)) do
  redis.call('HSET', K.run, field, value)
end
for i = FIRST_ROOT, waits and 0 or #ARGV, 2 do
  local root = ARGV[i]
  redis.call('HSET', K.nodes, root .. ':state', 'queued', root .. ':queued', nowstr)
  count_move(root, false, 'queued')
  redis.call('ZADD', K.queued, now + tonumber(ARGV[i + 1]) + lease, root)
end
counts_into({})  -- one HINCRBY, however many roots (lib/counts.lua)
expire_keys({K.run, K.nodes, K.queued}, run_ttl)
return {1, nowstr}
