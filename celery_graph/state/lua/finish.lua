-- finish.lua: end a run that is still running as failed or cancelled, wake its waiters and
-- set the expiry of every key of the run. The first caller wins; later ones change nothing.
--
-- KEYS[1] run record          (hash)
-- KEYS[2] run results         (hash)
-- KEYS[3] run node state      (hash)
-- KEYS[4] completion signal   (list)
-- KEYS[5] finished sinks      (set)
-- KEYS[6] run shared state    (hash)
-- KEYS[7] running leases      (zset)
-- KEYS[8] queued leases       (zset)
-- (arrivals of joins and maps not released keep their own expiry, the run ttl at most)
-- ARGV[1] final status: "failed" or "cancelled"
-- ARGV[2] node id that caused it, or "" (cancel)
-- ARGV[3] error (JSON), or ""
-- ARGV[4] result ttl (seconds)
-- ARGV[5] the result field of the failing message ("<node>", "<node>#<i>", "<node>@<j>"),
--         or "": when a result is stored there or the field succeeded, the failure is a
--         failing copy of a message that succeeded, and is ignored
-- ARGV[6] "1" when the run failed before any message was sent (a retry of the submission
--         with the same idempotency key starts it afresh), else ""
--
-- Returns 1 when this call ended the run, 0 when it had already ended, -1 when the failure
-- was ignored.
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then
  return 0
end
-- (a chunk keeps no result of its own: its arrival marks it succeeded)
if ARGV[5] ~= '' and (redis.call('HEXISTS', KEYS[2], ARGV[5]) == 1
    or redis.call('HGET', KEYS[3], ARGV[5] .. ':state') == 'succeeded') then
  return -1
end
-- "<field>:run" packs what an attempt records: "attempts|started|finished|worker"
local function finished(field, when)
  local raw = redis.call('HGET', KEYS[3], field .. ':run') or '0|||'
  local a, s, _, w = string.match(raw, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
  redis.call('HSET', KEYS[3], field .. ':run', a .. '|' .. s .. '|' .. when .. '|' .. w)
end
local t = redis.call('TIME')
local nowstr = string.format('%.6f', tonumber(t[1]) + tonumber(t[2]) / 1000000)
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished', nowstr)
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'error', ARGV[3])
end
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[1], 'unsent', '1')
end
if ARGV[2] ~= '' then
  -- failed with the run, not tolerated by a group policy: a resume runs it again
  redis.call('HSET', KEYS[3], ARGV[2] .. ':state', 'failed', ARGV[2] .. ':unsettled', '1')
  finished(ARGV[2], nowstr)
end
redis.call('RPUSH', KEYS[4], ARGV[1])
for i = 1, 8 do
  redis.call('EXPIRE', KEYS[i], ARGV[4])
end
return 1
