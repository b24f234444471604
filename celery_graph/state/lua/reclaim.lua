-- reclaim.lua: the reconciler's look at one run. Finds the leases that ran out (a node
-- whose worker died, a message the broker lost, a skip nobody passed on) and says what
-- each one needs; the caller publishes again (lease.lua "redeliver" first), or leaves a
-- queued node waiting while its queue is busy (nothing is written then: the same lease
-- comes back at the next look).
--
-- KEYS[1] run record          (hash)
-- KEYS[2] run node state      (hash)
-- KEYS[3] running leases      (zset: field -> lease expiry, server time)
-- KEYS[4] queued leases       (zset: field -> lease expiry, server time)
-- ARGV[1] how many times a node may lose its worker before the run fails
-- ARGV[2] at most this many leases of each kind per call
--
-- Returns one of
--   {"gone"}                          no run record (expired, or never created)
--   {"ended", pending}                the run ended; pending is 1 while a Celery canvas
--                                     still waits for its continuation
--   {"deadline"}                      running past its deadline
--   {"poison", field, lost, worker}   a node lost its worker more than ARGV[1] times
--   {"ok", now, next running, next queued, n, field, kind, queued, ... (n triples)}
--       kind: "lost" (running, its worker stopped renewing), "queued" (published, or
--       waiting for a retry, and never started), "skip" (a skip to pass on), "map" (a
--       map node whose units all arrived, not completed); queued: when
--       the node (an item: its map node) was last published, or ""; next running / next
--       queued: the earliest lease of each kind left, or "" when there is none.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return {'gone'}
end
if status ~= 'running' then
  local pending = 0
  if redis.call('HEXISTS', KEYS[1], 'continuation') == 1
      and redis.call('HGET', KEYS[1], 'continued') ~= 'done' then
    pending = 1
  end
  return {'ended', pending}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local deadline = redis.call('HGET', KEYS[1], 'deadline')
if deadline and now > tonumber(deadline) then
  return {'deadline'}
end
local max_lost = tonumber(ARGV[1])
local found = {}
local function add(field, kind)
  local node = string.match(field, '^([^#@]+)')
  found[#found + 1] = field
  found[#found + 1] = kind
  found[#found + 1] = redis.call('HGET', KEYS[2], field .. ':queued')
                      or redis.call('HGET', KEYS[2], node .. ':queued') or ''
end
local function ended(state)
  return state == 'succeeded' or state == 'failed' or state == 'skipped' or state == 'mapping'
end
for _, field in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, ARGV[2])) do
  local state = redis.call('HGET', KEYS[2], field .. ':state')
  if state == 'mapping' then
    add(field, 'map')  -- its last unit's arrival leased it (map_arrive.lua)
  elseif ended(state) then
    redis.call('ZREM', KEYS[3], field)  -- the lease is stale
  elseif state == 'running' then
    local lost = redis.call('HINCRBY', KEYS[2], field .. ':lost', 1)
    if lost > max_lost then
      local run = redis.call('HGET', KEYS[2], field .. ':run') or ''
      return {'poison', field, lost, string.match(run, '^[^|]*|[^|]*|[^|]*|(.*)$') or ''}
    end
    add(field, 'lost')
  elseif state == 'skipping' then
    add(field, 'skip')
  else
    add(field, 'queued')
  end
end
for _, field in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, ARGV[2])) do
  if ended(redis.call('HGET', KEYS[2], field .. ':state')) then
    redis.call('ZREM', KEYS[4], field)
  else
    add(field, 'queued')
  end
end
local running = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')[2] or ''
local queued = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')[2] or ''
local out = {'ok', string.format('%.6f', now), running, queued, #found / 3}
for _, v in ipairs(found) do
  out[#out + 1] = v
end
return out
