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

-- Steps: the handlers and compensations that follow the end of a run's graph (the run
-- record's "after", written at its start from the graph: {"failure": step or "",
-- "exit": step or "", "undo": [[node, step], ...], "lease": queued lease}). While they
-- run, the run's status is "finishing" and its record holds "outcome" (the final state
-- to come), "steps" (JSON list) and "step" (the position of the current one, from 1);
-- only the current step may begin, one at a time.

-- The step the run is finishing with, or nil.
local function current_step()
  if redis.call('HGET', K.run, 'status') ~= 'finishing' then
    return nil
  end
  local steps = cjson.decode(redis.call('HGET', K.run, 'steps'))
  return steps[tonumber(redis.call('HGET', K.run, 'step'))]
end

-- Release ``step``: queued, with a queued lease the reconciler acts on.
local function release_step(step, nowstr)
  local after = cjson.decode(redis.call('HGET', K.run, 'after'))
  redis.call('HSET', K.nodes, step .. ':state', 'queued', step .. ':queued', nowstr)
  redis.call('HDEL', K.results, step)
  redis.call('ZADD', K.queued, tonumber(nowstr) + after.lease, step)
end

-- The steps that follow a graph that ended as ``final``: the compensations of the nodes
-- that succeeded (a failed run only), latest completion first, then the failure handler
-- (a failed run only), then the exit handler.
local function steps_after(final)
  local raw = redis.call('HGET', K.run, 'after')
  if not raw then
    return {}
  end
  local after = cjson.decode(raw)
  local steps = {}
  if final == 'failed' then
    local done = {}
    for i, pair in ipairs(after.undo) do
      local node = pair[1]
      if redis.call('HEXISTS', K.results, node) == 1 then
        local rec = redis.call('HGET', K.nodes, node .. ':run') or ''
        local finished = string.match(rec, '^[^|]*|[^|]*|([^|]*)|') or ''
        done[#done + 1] = {pair[2], tonumber(finished) or 0, i}
      end
    end
    table.sort(done, function(a, b)
      if a[2] ~= b[2] then return a[2] > b[2] end
      return a[3] > b[3]
    end)
    for _, d in ipairs(done) do
      steps[#steps + 1] = d[1]
    end
    if after.failure ~= '' then
      steps[#steps + 1] = after.failure
    end
  end
  if after.exit ~= '' then
    steps[#steps + 1] = after.exit
  end
  return steps
end

-- What the completion signal says: the final status and, for a run that succeeded with
-- at most DONE_SINKS sinks whose results take at most DONE_BYTES, the sinks and their
-- results, so a waiter it wakes has the outcome without reading it (runs.py parses it):
-- "succeeded\n<the record's sinks, JSON>\n" and per sink "<bytes>:<result>" or "-" (none).
-- The signal keeps its copy as long as the run's keys live: small, so it costs little.
local DONE_SINKS, DONE_BYTES = 64, 1024
local function done_signal(final)
  if final ~= 'succeeded' then
    return final
  end
  local sinks_json = redis.call('HGET', K.run, 'sinks')
  local sinks = sinks_json and cjson.decode(sinks_json) or {}
  if #sinks == 0 or #sinks > DONE_SINKS then
    return final
  end
  local raws = redis.call('HMGET', K.results, unpack(sinks))
  local parts, size = {final, '\n', sinks_json, '\n'}, 0
  for i = 1, #sinks do
    local raw = raws[i]
    if raw then
      size = size + #raw
      if size > DONE_BYTES then
        return final
      end
      parts[#parts + 1] = #raw .. ':' .. raw
    else
      parts[#parts + 1] = '-'
    end
  end
  return table.concat(parts)
end

-- End the run as ``final`` (succeeded, failed, cancelled) at ``nowstr`` with ``error_json``
-- (JSON, or "" for none): wake the waiters, and every key of the run expires after
-- ``ttl`` seconds (arrivals of joins and maps keep their own expiry, the run ttl at most).
-- A run whose graph has steps to follow this end goes "finishing" instead, its first
-- step released (the caller reads the status and publishes it); the last step's end
-- closes it (after.lua).
local function close_run(final, nowstr, error_json, ttl)
  if error_json ~= '' then
    redis.call('HSET', K.run, 'error', error_json)
  end
  if redis.call('HGET', K.run, 'status') == 'running' then
    local steps = steps_after(final)
    if #steps > 0 then
      redis.call('HSET', K.run, 'status', 'finishing', 'outcome', final, 'ended', nowstr,
                 'steps', cjson.encode(steps), 'step', 1)
      release_step(steps[1], nowstr)
      return
    end
  end
  redis.call('HSET', K.run, 'status', final, 'finished', nowstr)
  redis.call('RPUSH', K.done, done_signal(final))
  expire_keys(RUN_KEYS, ttl)
end
