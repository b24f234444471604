-- begin.lua: a worker starts a node. Reads what the node needs in one round trip and
-- records the attempt, but only while the run is still running (so a late duplicate of a
-- finished run's message never re-creates an expired key).
--
-- KEYS[1] run record          (hash)
-- KEYS[2] run results         (hash: node id -> JSON result)
-- KEYS[3] run node state      (hash: "<node>:<field>" -> value)
-- ARGV[1] node id
-- ARGV[2] worker hostname
-- ARGV[3] now (unix seconds, float as string)
-- ARGV[4] run ttl (seconds) for the node-state hash
-- ARGV[5..] ids of the upstream nodes whose results the node reads
--
-- Returns {status} when the run is not running, {"deadline"} when the run's deadline
--         (field "deadline" of the run record, unix seconds) has passed, else
--         {status, inputs JSON|nil, own result|nil, upstream result|nil ...}
-- (own result set = the node already finished: the caller must not call it again).
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' then
  return {status}
end
local deadline = redis.call('HGET', KEYS[1], 'deadline')
if deadline and tonumber(ARGV[3]) > tonumber(deadline) then
  return {'deadline'}
end
local node = ARGV[1]
local own = redis.call('HGET', KEYS[2], node)
local out = {status, redis.call('HGET', KEYS[1], 'inputs'), own}
if own then
  return out
end
redis.call('HSET', KEYS[3], node .. ':state', 'running', node .. ':worker', ARGV[2],
           node .. ':started', ARGV[3])
redis.call('HINCRBY', KEYS[3], node .. ':attempts', 1)
redis.call('EXPIRE', KEYS[3], ARGV[4])
for i = 5, #ARGV do
  out[#out + 1] = redis.call('HGET', KEYS[2], ARGV[i])
end
return out
