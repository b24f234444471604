-- lib/run.lua: the run's keys, named once, and what every script does with them.
--
-- Every run script takes the run's keys first, in the order keys.RunKeys builds them;
-- a script's own keys (a join's arrivals, a map's) follow from KEYS[9].
local K = {
  run = KEYS[1],      -- run record (hash)
  results = KEYS[2],  -- results (hash)
  nodes = KEYS[3],    -- node state (hash)
  sinks = KEYS[4],    -- finished sinks (set)
  done = KEYS[5],     -- completion signal (list)
  state = KEYS[6],    -- shared state (hash)
  leases = KEYS[7],   -- running leases (zset)
  queued = KEYS[8],   -- queued leases (zset)
}
local RUN_KEYS = {K.run, K.results, K.nodes, K.sinks, K.done, K.state, K.leases, K.queued}
local FIRST_OWN_KEY = 9

-- EXPIRE each of ``keys`` (a list) after ``ttl`` seconds.
local function expire_keys(keys, ttl)
  for _, key in ipairs(keys) do
    redis.call('EXPIRE', key, ttl)
  end
end

-- Keys written after the run ended (a late result, a lease set again) take the run
-- record's remaining life when they have none, so nothing outlives the run.
local function adopt_run_ttl(keys)
  local ttl = redis.call('PTTL', K.run)
  if ttl > 0 then
    for _, key in ipairs(keys) do
      if redis.call('PTTL', key) == -1 then
        redis.call('PEXPIRE', key, ttl)
      end
    end
  end
end

-- True when the run has a deadline (server time, in the run record) and ``now`` is past it.
local function past_deadline(now)
  local deadline = redis.call('HGET', K.run, 'deadline')
  if not deadline then
    return false
  end
  return now > tonumber(deadline)
end

-- End the run as ``final`` (succeeded, failed, cancelled) at ``nowstr`` with ``error_json``
-- (JSON, or "" for none): wake the waiters, and every key of the run expires after
-- ``ttl`` seconds (arrivals of joins and maps keep their own expiry, the run ttl at most).
local function close_run(final, nowstr, error_json, ttl)
  redis.call('HSET', K.run, 'status', final, 'finished', nowstr)
  if error_json ~= '' then
    redis.call('HSET', K.run, 'error', error_json)
  end
  redis.call('RPUSH', K.done, final)
  expire_keys(RUN_KEYS, ttl)
end
