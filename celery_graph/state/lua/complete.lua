-- complete.lua: a node finished. Stores its result once, records barrier arrivals at its
-- successors, claims every successor whose barrier this arrival releases, and, when the
-- node is the last sink, ends the run and sets the expiry of every key of the run.
--
-- An arrival is a set member keyed by the arriving node, so a redelivered or duplicated
-- message never counts twice. A release is claimed with HSETNX "<succ>:dispatch" =
-- "released:<now>"; the caller publishes and then marks it "published" (mark.lua).
-- Another arrival that finds a successor still "released" within the grace period
-- (ARGV[8]) gets it back as "deferred": the releaser is most likely still publishing, so
-- the caller re-queues its own message for later instead of publishing a second time.
-- After the grace period the releaser is presumed dead (crashed between release and
-- publish): the arrival takes the claim over and publishes. Once "published", a
-- successor is never handed out again.
--
-- KEYS[1] run record          (hash)
-- KEYS[2] run results         (hash)
-- KEYS[3] run node state      (hash)
-- KEYS[4] finished sinks      (set)
-- KEYS[5] completion signal   (list)
-- KEYS[6 .. 5+J] arrival set of each join successor (set), in the order they appear in ARGV
-- KEYS[6+J ..]   when the node is a sink: every key of the run, to expire when it ends
-- Arrivals come in three kinds (ARGV[11]): "ok" (the node succeeded), "failed" (a member
-- of a group with a failure policy failed: no result, state "failed", error ARGV[9]) and
-- "skipped" (the node was skipped by a branch upstream: no result, state "skipped").
-- A node that returned branch(...) (ARGV[10] = "!" .. comma-separated chosen successors)
-- arrives as real only at the chosen successors and as a skip ("~<node>") at the others;
-- the first stored choice is kept, so a redelivered message repeats it. A successor whose
-- arrivals are all skips is skipped (claimed "skipped", returned so the caller passes the
-- skip on); one with at least one real arrival is released as usual.
--
-- ARGV[1] node id
-- ARGV[2] result (JSON), or "" for a failed or skipped arrival
-- ARGV[3] number of sinks in the graph, or 0 when this node is not a sink
-- ARGV[4] run ttl (seconds)
-- ARGV[5] result ttl (seconds): how long a finished run is kept
-- ARGV[6] now (unix seconds)
-- ARGV[7] S, the number of successors
-- ARGV[8] release grace (seconds)
-- ARGV[9] error (JSON) of a failed arrival, else ""
-- ARGV[10] branch choice "!a,b", or "" (every successor)
-- ARGV[11] arrival kind: "ok", "failed" or "skipped"
-- ARGV[12 ..] S pairs: successor id, number of predecessors of that successor
--
-- Returns {stored, finished, P, D, P ids to publish, D ids deferred, ids skipped ...}:
-- stored is 1 when this call stored the result, 0 when a result was already there, -1
-- when the run is not running.
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' then
  return {-1, 0, 0, 0}
end
local node = ARGV[1]
local run_ttl = ARGV[4]
local kind = ARGV[11]
local stored = 0
if kind == 'failed' then
  redis.call('HSET', KEYS[3], node .. ':state', 'failed', node .. ':finished', ARGV[6],
             node .. ':error', ARGV[9])
elseif kind == 'skipped' then
  redis.call('HSET', KEYS[3], node .. ':state', 'skipped', node .. ':finished', ARGV[6])
else
  stored = redis.call('HSETNX', KEYS[2], node, ARGV[2])
  redis.call('EXPIRE', KEYS[2], run_ttl)
  redis.call('HSET', KEYS[3], node .. ':state', 'succeeded', node .. ':finished', ARGV[6])
  if ARGV[10] ~= '' then
    redis.call('HSETNX', KEYS[3], node .. ':branch', ARGV[10])
  end
end
redis.call('EXPIRE', KEYS[3], run_ttl)

local chosen = nil
local choice = redis.call('HGET', KEYS[3], node .. ':branch')
if choice then
  chosen = {}
  for id in string.gmatch(string.sub(choice, 2), '[^,]+') do
    chosen[id] = true
  end
end

local now = tonumber(ARGV[6])
local grace = tonumber(ARGV[8])
local publish = {}
local deferred = {}
local skipped = {}
local nsucc = tonumber(ARGV[7])
local k = 6
for i = 0, nsucc - 1 do
  local succ = ARGV[12 + 2 * i]
  local npreds = tonumber(ARGV[13 + 2 * i])
  local real = kind ~= 'skipped' and (chosen == nil or chosen[succ] == true)
  local ready = true
  local any_real = real
  if npreds > 1 then
    redis.call('SADD', KEYS[k], real and node or ('~' .. node))
    redis.call('EXPIRE', KEYS[k], run_ttl)
    ready = redis.call('SCARD', KEYS[k]) >= npreds
    if ready then
      any_real = false
      for _, member in ipairs(redis.call('SMEMBERS', KEYS[k])) do
        if string.sub(member, 1, 1) ~= '~' then
          any_real = true
          break
        end
      end
    end
    k = k + 1
  end
  if ready then
    local field = succ .. ':dispatch'
    if not any_real then
      redis.call('HSETNX', KEYS[3], field, 'skipped')
      if redis.call('HGET', KEYS[3], field) == 'skipped' then
        skipped[#skipped + 1] = succ
      end
    elseif redis.call('HSETNX', KEYS[3], field, 'released:' .. ARGV[6]) == 1 then
      publish[#publish + 1] = succ
    else
      local claim = redis.call('HGET', KEYS[3], field)
      local since = string.match(claim, '^released:(.+)$')
      if since then
        if now - tonumber(since) >= grace then
          redis.call('HSET', KEYS[3], field, 'released:' .. ARGV[6])
          publish[#publish + 1] = succ
        else
          deferred[#deferred + 1] = succ
        end
      end
    end
  end
end
local out = {stored, 0, #publish, #deferred}
for _, s in ipairs(publish) do out[#out + 1] = s end
for _, s in ipairs(deferred) do out[#out + 1] = s end
for _, s in ipairs(skipped) do out[#out + 1] = s end

local nsinks = tonumber(ARGV[3])
if nsinks > 0 then
  redis.call('SADD', KEYS[4], node)
  redis.call('EXPIRE', KEYS[4], run_ttl)
  if redis.call('SCARD', KEYS[4]) >= nsinks then
    redis.call('HSET', KEYS[1], 'status', 'succeeded', 'finished', ARGV[6])
    redis.call('RPUSH', KEYS[5], 'succeeded')
    for i = k, #KEYS do
      redis.call('EXPIRE', KEYS[i], ARGV[5])
    end
    out[2] = 1
  end
end
return out
