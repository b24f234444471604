-- begin.lua: a worker starts a node (or an item of a map). Reads what the node needs in
-- one round trip and records the attempt with a running lease, but only while the run is
-- still running (so a late duplicate of a finished run's message never re-creates an
-- expired key). The worker renews the lease while the node runs (lease.lua); a lease
-- that runs out means the worker died, and the reconciler publishes the node again.
--
-- KEYS[1] run record          (hash)
-- KEYS[2] run results         (hash: node id or "<node>#<i>" -> JSON result)
-- KEYS[3] run node state      (hash: "<field>:state", "<field>:run" attempts|started|
--                              finished|worker, "<field>:queued", ... -> value)
-- KEYS[4] running leases      (zset: field -> lease expiry, server time)
-- KEYS[5] queued leases       (zset: field -> lease expiry; the field leaves it here)
-- ARGV[1] field: the node id, or "<node>#<i>" for item i of a map
-- ARGV[2] worker hostname
-- ARGV[3] running lease (seconds)
-- ARGV[4] run ttl (seconds)
-- ARGV[5] "map" for the message of a map node itself (it expands into items), else ""
-- ARGV[6] how many times a node may lose its worker (graph_max_lost)
-- ARGV[7 ..] ids of the upstream nodes whose results the node reads
--
-- Returns {status} when the run is not running; {"deadline"} when the run's deadline
-- (field "deadline" of the run record, server time) has passed; {"poison", times, last
-- worker} when the node's previous attempts died in their workers (each found the node
-- still "running") more than ARGV[6] times; {"done"} when the node
-- already ended without a result (failed under a group policy, skipped) or the map was
-- expanded already; {status, inputs JSON, own result} when the result is stored (the
-- caller must not call the function again); else {status, inputs JSON, false, attempt
-- number, upstream result or false ...}.
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' then
  return {status}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local deadline = redis.call('HGET', KEYS[1], 'deadline')
if deadline and now > tonumber(deadline) then
  return {'deadline'}
end
-- "<field>:run" packs what an attempt records: "attempts|started|finished|worker"
local function info(field)
  local raw = redis.call('HGET', KEYS[3], field .. ':run')
  if not raw then
    return {'0', '', '', ''}
  end
  local a, s, f, w = string.match(raw, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
  return {a, s, f, w}
end
local field = ARGV[1]
local own = redis.call('HGET', KEYS[2], field)
local inputs = redis.call('HGET', KEYS[1], 'inputs')
if own then
  return {status, inputs, own}
end
local state = redis.call('HGET', KEYS[3], field .. ':state')
if state == 'failed' or state == 'skipped' or state == 'skipping'
    or (ARGV[5] == 'map' and redis.call('HEXISTS', KEYS[3], field .. ':items') == 1) then
  return {'done'}
end
local run = info(field)
if state == 'running' then
  -- the previous attempt never ended: its worker died (a crash, an OOM kill, a pool
  -- process lost), and Celery or the broker delivered the message again
  local lost = redis.call('HINCRBY', KEYS[3], field .. ':lost', 1)
  if lost > tonumber(ARGV[6]) then
    return {'poison', lost, run[4]}
  end
end
local attempt = tonumber(run[1]) + 1
redis.call('HSET', KEYS[3], field .. ':state', 'running', field .. ':run',
           attempt .. '|' .. string.format('%.6f', now) .. '||' .. ARGV[2])
redis.call('HDEL', KEYS[3], field .. ':queued')
redis.call('ZREM', KEYS[5], field)
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[3]), field)
redis.call('EXPIRE', KEYS[3], ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[4])
local out = {status, inputs, false, attempt}
for i = 7, #ARGV do
  out[#out + 1] = redis.call('HGET', KEYS[2], ARGV[i])
end
return out
