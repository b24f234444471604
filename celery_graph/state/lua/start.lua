-- start.lua: create a run, mark its roots published and give each root a lease, so a
-- root whose message never reaches a worker is published again by the reconciler.
-- The run id is derived from the idempotency key when there is one: a run that exists
-- already is returned as it is, unless its submission failed before anything was sent
-- ("unsent"), which a retry starts afresh.
--
-- KEYS[1] run record       (hash)
-- KEYS[2] node state       (hash: "<node>:<field>" -> value)
-- KEYS[3] queued leases    (zset: node -> lease expiry, server time)
-- KEYS[4 ..] every other key of the run (deleted when an unsent run starts afresh)
-- ARGV[1] graph id
-- ARGV[2] run inputs (JSON)
-- ARGV[3] number of nodes
-- ARGV[4] sink ids (JSON list)
-- ARGV[5] deadline, seconds from now, or ""
-- ARGV[6] run ttl (seconds)
-- ARGV[7] queued lease (seconds)
-- ARGV[8] more fields of the run record (JSON object of strings)
-- ARGV[9 ..] pairs: root id, its start delay in seconds
--
-- Returns {1, now} when this call created the run, {0, status} when it exists.
local status = redis.call('HGET', KEYS[1], 'status')
if status then
  if not (status == 'failed' and redis.call('HGET', KEYS[1], 'unsent') == '1') then
    return {0, status}
  end
  for i = 1, #KEYS do
    redis.call('DEL', KEYS[i])
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local nowstr = string.format('%.6f', now)
redis.call('HSET', KEYS[1], 'status', 'running', 'graph', ARGV[1], 'inputs', ARGV[2],
           'created', nowstr, 'nodes', ARGV[3], 'sinks', ARGV[4])
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'deadline', string.format('%.6f', now + tonumber(ARGV[5])))
end
for field, value in pairs(cjson.decode(ARGV[8])) do
  redis.call('HSET', KEYS[1], field, value)
end
local lease = tonumber(ARGV[7])
for i = 9, #ARGV, 2 do
  local root = ARGV[i]
  redis.call('HSET', KEYS[2], root .. ':state', 'queued', root .. ':queued', nowstr)
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[i + 1]) + lease, root)
end
for i = 1, 3 do
  redis.call('EXPIRE', KEYS[i], ARGV[6])
end
return {1, nowstr}
