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
-- ended after its failed or cancelled run did, or its failure broke its group's policy);
-- a resume sends it again, and its last part here clears the mark. A copy that ends after
-- another copy arrived, or after the run succeeded, marks nothing.
--
-- A node with many successors arrives in parts (ARGV[14], ARGV[15]): the first part stores
-- the result (or the failure, or the skip), every part arrives at its share of the
-- successors, the last part marks the node succeeded and drops its lease. A worker that
-- dies between parts leaves the node "running" with its result stored: its lease runs
-- out, the reconciler sends it again, and the copy arrives everywhere again (idempotent).
--
-- KEYS[1] K.run      run record          (hash)
-- KEYS[2] K.results  run results         (hash)
-- KEYS[3] K.nodes    run node state      (hash)
-- KEYS[4] K.sinks    finished sinks      (set)
-- KEYS[5] K.done     completion signal   (list)
-- KEYS[6] K.state    run shared state    (hash; only expired here)
-- KEYS[7] K.leases   running leases      (zset: field -> lease expiry; skips to pass on
--                                         go here too)
-- KEYS[8] K.queued   queued leases       (zset: released successors wait here until they
--                                         start)
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
-- Returns {stored, ended, P, P ids to publish ..., ids skipped ...}: stored is a Stored
-- (STORED by this call, KEPT when a result was there already, NOT_RUNNING when the run is
-- not running, IGNORED when a failure was ignored because a result is stored); ended is
-- an Ended (SUCCEEDED when this call ended the run as succeeded, FAILED as failed by a
-- broken group policy, else NO). A call that ended the run answers no ids: "#record",
-- then the run record as it is now (HGETALL's field, value pairs), which the end of the
-- run reads (one round trip less).
-- @include "clock"
-- @include "run"
-- @include "node_record"
-- @include "counts"
local node, result, nsinks = ARGV[1], ARGV[2], tonumber(ARGV[3])
local run_ttl, result_ttl = ARGV[4], ARGV[5]
local nsucc, lease = tonumber(ARGV[6]), tonumber(ARGV[7])
local error_json, branch, kind = ARGV[8], ARGV[9], ARGV[10]
local policy_json, group, traceback = ARGV[11], ARGV[12], ARGV[13]
local first, last, pinned = ARGV[14] == '1', ARGV[15] == '1', ARGV[16] == '1'
local FIRST_SUCC = 17

local Stored = {STORED = 1, KEPT = 0, NOT_RUNNING = -1, IGNORED = -2}
local Ended = {NO = 0, SUCCEEDED = 1, FAILED = 2}

local now, nowstr = server_clock()

-- the branch choice is kept for a node that chose, or whose copies could disagree
local function pin_choice()
  if branch ~= '' or pinned then
    redis.call('HSETNX', K.nodes, node .. ':branch', branch ~= '' and branch or '*')
  end
end

local status = redis.call('HGET', K.run, 'status')
if status ~= 'running' then
  if status and kind == 'ok' and first then
    -- The run ended (cancelled, or failed elsewhere) while the node ran: keep its result
    -- and its branch choice, so a resume does not call it again, and never past the
    -- expiry of the run's keys. Its arrivals are not made: ":unsettled" tells a resume to
    -- send it again, and that copy (which finds its result) makes them.
    redis.call('HSETNX', K.results, node, result)
    pin_choice()
    -- a late copy of a node that arrived already (another copy ran it, and the run went
    -- on) has nothing to settle; nor has anything of a run that succeeded (never resumed)
    local old = redis.call('HGET', K.nodes, node .. ':state')
    if status ~= 'succeeded' and old ~= 'succeeded' then
      set_state(node, old, 'succeeded', node .. ':unsettled', '1')
      record_finished(node, nowstr)
    end
    redis.call('ZREM', K.leases, node)
    redis.call('ZREM', K.queued, node)
    adopt_run_ttl({K.results, K.nodes})
  end
  return {Stored.NOT_RUNNING, Ended.NO, 0}
end

local stored = Stored.KEPT
if first then
  if kind == 'failed' then
    if redis.call('HEXISTS', K.results, node) == 1 then
      -- a failing copy of a node whose result is stored
      return {Stored.IGNORED, Ended.NO, 0}
    end
    redis.call('HSET', K.nodes, node .. ':error', error_json)
  elseif kind == 'ok' then
    stored = redis.call('HSETNX', K.results, node, result)
    redis.call('EXPIRE', K.results, run_ttl)
    pin_choice()
  end
end

-- what this arrival reads of the node state, in one call: the node's state, record,
-- unsettled mark and branch choice, then the state of each successor. (The node state
-- keeps the expiry the run's start or resume gave it: it never empties while the run runs.)
local fields = {node .. ':state', record_field(node), node .. ':unsettled', node .. ':branch'}
for i = 0, nsucc - 1 do
  fields[#fields + 1] = ARGV[FIRST_SUCC + 3 * i] .. ':state'
end
-- (then the counts an arrival moves: lib/counts.lua)
local MOVED = {'failed', 'queued', 'running', 'skipped', 'skipping', 'succeeded'}
local seen = redis.call('HMGET', K.nodes, unpack(count_fields(fields, MOVED)))
local FIRST_SUCC_STATE = 5
counts_read(MOVED, seen, FIRST_SUCC_STATE + nsucc)
local current = seen[1]  -- the node's state, as this call leaves it

-- writes to the node state, made in one HSET (flush) before the script answers
local writes = {}
-- the answer of a call that ended the run: the run record follows "#record"
local function with_record(out)
  out[#out + 1] = '#record'
  for _, v in ipairs(redis.call('HGETALL', K.run)) do
    out[#out + 1] = v
  end
  return out
end

local function flush()
  counts_into(writes)
  if #writes > 0 then
    redis.call('HSET', K.nodes, unpack(writes))
    writes = {}
  end
end

if last then
  -- the final state is set in the last part: a worker that dies between parts leaves the
  -- node with its lease, and a copy arrives everywhere again
  local final = ({ok = 'succeeded', failed = 'failed', skipped = 'skipped'})[kind]
  local r = parse_record(seen[2])
  r.finished = nowstr
  writes = {node .. ':state', final, record_field(node), pack_record(r)}
  count_move(node, current, final)
  current = final
  if seen[3] then
    redis.call('HDEL', K.nodes, node .. ':unsettled')
  end
  redis.call('ZREM', K.leases, node)
  -- a running node left the queued leases when it began (begin.lua)
  if seen[1] ~= 'running' then
    redis.call('ZREM', K.queued, node)
  end
end

if first and kind == 'failed' and policy_json ~= '' then
  flush()
  local policy = cjson.decode(policy_json)
  local failed = {}
  local is_failed = {}
  for _, m in ipairs(policy.members) do
    if m == node or redis.call('HGET', K.nodes, m .. ':state') == 'failed' then
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
    set_state(node, current, 'failed', node .. ':unsettled', '1')
    record_finished(node, nowstr)
    table.sort(failed)
    local message = "group '" .. group .. "' (" .. policy.kind .. ' policy): ' .. why
                    .. '; failed: ' .. table.concat(failed, ', ')
    close_run('failed', nowstr, cjson.encode({node = node, type = 'GroupPolicyFailed',
                                              module = 'celery_graph.errors',
                                              message = message, traceback = traceback}),
              result_ttl)
    return with_record({Stored.KEPT, Ended.FAILED, 0})
  end
end

local chosen = nil
local choice = seen[4]
if choice and choice ~= '*' then
  chosen = {}
  for id in string.gmatch(string.sub(choice, 2), '[^,]+') do
    chosen[id] = true
  end
end

local publish = {}
local skipped = {}
local leased, queued = false, false
local k = FIRST_OWN_KEY
for i = 0, nsucc - 1 do
  local succ = ARGV[FIRST_SUCC + 3 * i]
  local npreds = tonumber(ARGV[FIRST_SUCC + 1 + 3 * i])
  local delay = tonumber(ARGV[FIRST_SUCC + 2 + 3 * i])
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
    redis.call('EXPIRE', KEYS[k], ready and result_ttl or run_ttl)
    k = k + 1
  end
  if ready then
    local field = succ .. ':state'
    local state = seen[FIRST_SUCC_STATE + i]
    if not any_real then
      -- to be skipped: every copy passes the skip on while it is pending (it is
      -- idempotent); the lease makes the reconciler finish a propagation nobody did
      if not state then
        redis.call('HSET', K.nodes, field, 'skipping')
        count_move(succ, false, 'skipping')
        redis.call('ZADD', K.leases, now + lease, succ)
        leased = true
        state = 'skipping'
      end
      if state == 'skipping' then
        skipped[#skipped + 1] = succ
      end
    elseif not state then
      -- released once: its state goes from nothing to "queued" (read above, in this call)
      writes[#writes + 1] = field
      writes[#writes + 1] = 'queued'
      writes[#writes + 1] = succ .. ':queued'
      writes[#writes + 1] = nowstr
      count_move(succ, false, 'queued')
      redis.call('ZADD', K.queued, now + delay + lease, succ)
      queued = true
      publish[#publish + 1] = succ
    end
  end
end
flush()
-- a set emptied earlier (Redis drops it) that this call added to takes the run's expiry
if leased then
  redis.call('EXPIRE', K.leases, run_ttl)
end
if queued then
  redis.call('EXPIRE', K.queued, run_ttl)
end
local out = {stored, Ended.NO, #publish}
for _, s in ipairs(publish) do out[#out + 1] = s end
for _, s in ipairs(skipped) do out[#out + 1] = s end

if last and nsinks > 0 then
  redis.call('SADD', K.sinks, node)
  redis.call('EXPIRE', K.sinks, run_ttl)
  if redis.call('SCARD', K.sinks) >= nsinks then
    close_run('succeeded', nowstr, '', result_ttl)
    out[2] = Ended.SUCCEEDED
    if #out == 3 then  -- a sink has no successors: nothing released or skipped
      with_record(out)
    end
  end
end
return out
