-- complete.lua: a node ended. Stores its result once, records its arrival at each
-- successor's barrier, releases every successor that arrival makes ready, and, when the
-- node is the last sink, ends the run and sets the expiry of every key of the run.
--
-- Arrivals. A join's arrivals are fields of a hash keyed by the arriving node, so a
-- redelivered or duplicated message never counts twice, whatever it arrives as. A node's
-- branch choice is pinned by its first stored result ("*" when it chose nothing: every
-- successor; kept only for a node with two successors or more, where copies could
-- disagree), so every copy of it arrives the same way. A successor is released once: its
-- state goes from nothing to "queued" (or "skipping") here, with a lease, before the
-- caller publishes it. A caller that dies before publishing leaves a lease
-- that runs out, and the reconciler publishes the successor; no arrival ever publishes a
-- successor a second time.
--
-- Kinds of arrival (ARGV[10]): "ok" (the node succeeded), "failed" (a member of a group
-- with a failure policy failed after its retries: state "failed", error ARGV[8]; the
-- policy, ARGV[11], is decided here, and a broken policy ends the run as failed) and
-- "skipped" (a branch upstream skipped the node). A node that chose successors with
-- branch() ("!a,b" in ARGV[9]) arrives as real at the chosen ones and as a skip at the
-- others. A successor whose arrivals are all skips is skipped (and returned, so the
-- caller passes the skip on); one with at least one real arrival is released.
--
-- "<node>:unsettled" marks a node whose end is recorded but whose arrivals are not (it
-- ended after its run did, or its failure broke its group's policy); a resume sends it
-- again, and its last part here clears the mark.
--
-- A node with many successors arrives in parts (ARGV[14], ARGV[15]): the first part stores
-- the result (or the failure, or the skip), every part arrives at its share of the
-- successors, the last part marks the node succeeded and drops its lease. A worker that
-- dies between parts leaves the node "running" with its result stored: its lease runs
-- out, the reconciler sends it again, and the copy arrives everywhere again (idempotent).
--
-- KEYS[1] run record          (hash)
-- KEYS[2] run results         (hash)
-- KEYS[3] run node state      (hash)
-- KEYS[4] finished sinks      (set)
-- KEYS[5] completion signal   (list)
-- KEYS[6] running leases      (zset: field -> lease expiry; skips to pass on go here too)
-- KEYS[7] run shared state    (hash; only expired here)
-- KEYS[8] queued leases       (zset: released successors wait here until they start)
-- KEYS[9 ..] arrivals of each join successor (hash), in the order of ARGV's successors;
--            a join's arrivals expire after the result ttl once it is released
-- ARGV[1] node id
-- ARGV[2] result (JSON), or "" for a failed or skipped arrival
-- ARGV[3] number of sinks in the graph, or 0 when this node is not a sink
-- ARGV[4] run ttl (seconds)
-- ARGV[5] result ttl (seconds): how long a finished run is kept
-- ARGV[6] S, the number of successors
-- ARGV[7] queued lease (seconds) of a released successor
-- ARGV[8] error (JSON) of a failed arrival, else ""
-- ARGV[9] branch choice "!a,b", or "" (every successor)
-- ARGV[10] arrival kind: "ok", "failed" or "skipped"
-- ARGV[11] failure policy of the node's group (JSON: kind, members, n | critical), or ""
-- ARGV[12] the group's name, for the error when the policy breaks
-- ARGV[13] the traceback to keep with that error
-- ARGV[14] "1" in the first part of the node's arrivals, else ""
-- ARGV[15] "1" in the last part, else ""
-- ARGV[16] "1" when the node has two successors or more (its choice is pinned), else ""
-- ARGV[17 ..] S triples: successor id, its number of predecessors, its start delay
--
-- Returns {stored, ended, P, P ids to publish ..., ids skipped ...}: stored is 1 when this
-- call stored the result, 0 when a result was there already, -1 when the run is not
-- running, -2 when a failure was ignored (a result is stored); ended is 1 when this call ended the run as succeeded, 2 as failed (a broken
-- group policy).
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local nowstr = string.format('%.6f', now)
local node = ARGV[1]
local kind = ARGV[10]
local run_ttl = ARGV[4]
local nsucc = tonumber(ARGV[6])
local first = ARGV[14] == '1'
local last = ARGV[15] == '1'

-- "<field>:run" packs what an attempt records: "attempts|started|finished|worker"
local function finished(field, when)
  local raw = redis.call('HGET', KEYS[3], field .. ':run') or '0|||'
  local a, s, _, w = string.match(raw, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
  redis.call('HSET', KEYS[3], field .. ':run', a .. '|' .. s .. '|' .. when .. '|' .. w)
end

local function end_run(final, error)
  redis.call('HSET', KEYS[1], 'status', final, 'finished', nowstr)
  if error then
    redis.call('HSET', KEYS[1], 'error', error)
  end
  redis.call('RPUSH', KEYS[5], final)
  for i = 1, 8 do
    redis.call('EXPIRE', KEYS[i], ARGV[5])
  end
end

local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' then
  if status and kind == 'ok' and first then
    -- The run ended (cancelled, or failed elsewhere) while the node ran: keep its result
    -- and its branch choice, so a resume does not call it again, and never past the
    -- expiry of the run's keys. Its arrivals are not made: ":unsettled" tells a resume to
    -- send it again, and that copy (which finds its result) makes them.
    local ttl = redis.call('PTTL', KEYS[1])
    redis.call('HSETNX', KEYS[2], node, ARGV[2])
    if ARGV[9] ~= '' or ARGV[16] == '1' then
      redis.call('HSETNX', KEYS[3], node .. ':branch', ARGV[9] ~= '' and ARGV[9] or '*')
    end
    redis.call('HSET', KEYS[3], node .. ':state', 'succeeded', node .. ':unsettled', '1')
    finished(node, nowstr)
    redis.call('ZREM', KEYS[6], node)
    redis.call('ZREM', KEYS[8], node)
    for i = 2, 3 do
      if ttl > 0 and redis.call('PTTL', KEYS[i]) == -1 then
        redis.call('PEXPIRE', KEYS[i], ttl)
      end
    end
  end
  return {-1, 0, 0}
end

local stored = 0
if first then
  if kind == 'failed' then
    if redis.call('HEXISTS', KEYS[2], node) == 1 then
      return {-2, 0, 0}  -- a failing copy of a node whose result is stored: ignored
    end
    redis.call('HSET', KEYS[3], node .. ':error', ARGV[8])
  elseif kind == 'ok' then
    stored = redis.call('HSETNX', KEYS[2], node, ARGV[2])
    redis.call('EXPIRE', KEYS[2], run_ttl)
    if ARGV[9] ~= '' or ARGV[16] == '1' then
      redis.call('HSETNX', KEYS[3], node .. ':branch', ARGV[9] ~= '' and ARGV[9] or '*')
    end
  end
end
if last then
  -- the final state is set in the last part: a worker that dies between parts leaves the
  -- node with its lease, and a copy arrives everywhere again
  local final = ({ok = 'succeeded', failed = 'failed', skipped = 'skipped'})[kind]
  redis.call('HSET', KEYS[3], node .. ':state', final)
  redis.call('HDEL', KEYS[3], node .. ':unsettled')
  finished(node, nowstr)
  redis.call('ZREM', KEYS[6], node)
  redis.call('ZREM', KEYS[8], node)
end
redis.call('EXPIRE', KEYS[3], run_ttl)

if first and kind == 'failed' and ARGV[11] ~= '' then
  local policy = cjson.decode(ARGV[11])
  local failed = {}
  local is_failed = {}
  for _, m in ipairs(policy.members) do
    if m == node or redis.call('HGET', KEYS[3], m .. ':state') == 'failed' then
      failed[#failed + 1] = m
      is_failed[m] = true
    end
  end
  local why = nil
  if policy.kind == 'at_least' then
    local left = #policy.members - #failed
    if left < policy.n then
      why = 'at most ' .. left .. ' of ' .. #policy.members .. ' members can succeed, '
            .. policy.n .. ' must'
    end
  elseif policy.kind == 'critical' then
    local lost = {}
    for _, c in ipairs(policy.critical) do
      if is_failed[c] then
        lost[#lost + 1] = c
      end
    end
    if #lost > 0 then
      table.sort(lost)
      why = 'critical member(s) ' .. table.concat(lost, ', ') .. ' failed'
    end
  end
  if why then
    -- this member's failure is the run's, not one its group tolerated: a resume runs it
    redis.call('HSET', KEYS[3], node .. ':state', 'failed', node .. ':unsettled', '1')
    finished(node, nowstr)
    table.sort(failed)
    local message = "group '" .. ARGV[12] .. "' (" .. policy.kind .. ' policy): ' .. why
                    .. '; failed: ' .. table.concat(failed, ', ')
    end_run('failed', cjson.encode({node = node, type = 'GroupPolicyFailed',
                                    module = 'celery_graph.errors', message = message,
                                    traceback = ARGV[13]}))
    return {0, 2, 0}
  end
end

local chosen = nil
local choice = redis.call('HGET', KEYS[3], node .. ':branch')
if choice and choice ~= '*' then
  chosen = {}
  for id in string.gmatch(string.sub(choice, 2), '[^,]+') do
    chosen[id] = true
  end
end

local lease = tonumber(ARGV[7])
local publish = {}
local skipped = {}
local k = 9
for i = 0, nsucc - 1 do
  local succ = ARGV[17 + 3 * i]
  local npreds = tonumber(ARGV[18 + 3 * i])
  local delay = tonumber(ARGV[19 + 3 * i])
  local real = kind ~= 'skipped' and (chosen == nil or chosen[succ] == true)
  local ready = true
  local any_real = real
  if npreds > 1 then
    if redis.call('HSETNX', KEYS[k], node, real and '1' or '0') == 1 then
      redis.call('HINCRBY', KEYS[k], '#n', 1)
      if real then
        redis.call('HINCRBY', KEYS[k], '#real', 1)
      end
    end
    ready = tonumber(redis.call('HGET', KEYS[k], '#n')) >= npreds
    any_real = tonumber(redis.call('HGET', KEYS[k], '#real') or '0') > 0
    -- once released, the arrivals only turn away late copies: kept as long as results
    redis.call('EXPIRE', KEYS[k], ready and ARGV[5] or run_ttl)
    k = k + 1
  end
  if ready then
    local field = succ .. ':state'
    if not any_real then
      -- to be skipped: every copy passes the skip on while it is pending (it is
      -- idempotent); the lease makes the reconciler finish a propagation nobody did
      if redis.call('HSETNX', KEYS[3], field, 'skipping') == 1 then
        redis.call('ZADD', KEYS[6], now + lease, succ)
      end
      if redis.call('HGET', KEYS[3], field) == 'skipping' then
        skipped[#skipped + 1] = succ
      end
    elseif redis.call('HSETNX', KEYS[3], field, 'queued') == 1 then
      redis.call('HSET', KEYS[3], succ .. ':queued', nowstr)
      redis.call('ZADD', KEYS[8], now + delay + lease, succ)
      publish[#publish + 1] = succ
    end
  end
end
redis.call('EXPIRE', KEYS[6], run_ttl)
redis.call('EXPIRE', KEYS[8], run_ttl)
local out = {stored, 0, #publish}
for _, s in ipairs(publish) do out[#out + 1] = s end
for _, s in ipairs(skipped) do out[#out + 1] = s end

local nsinks = tonumber(ARGV[3])
if last and nsinks > 0 then
  redis.call('SADD', KEYS[4], node)
  redis.call('EXPIRE', KEYS[4], run_ttl)
  if redis.call('SCARD', KEYS[4]) >= nsinks then
    end_run('succeeded', nil)
    out[2] = 1
  end
end
return out
