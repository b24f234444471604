-- item.lua: store the results of items of a chunk of a dynamic fan-out as they are
-- computed (the worker sends them a few at a time), so a chunk delivered again skips the
-- items already done.
--
-- KEYS[1] K.run      run record          (hash)
-- KEYS[2] K.results  run results         (hash: "<node>#<i>" -> JSON result of item i)
-- (KEYS[1..8] are the run's keys, lib/run.lua; the others are not touched here)
-- ARGV[1] run ttl (seconds)
-- ARGV[2..] field "<node>#<i>", its result (JSON), ... one pair per item
--
-- Returns the number of items stored now (one stored already is kept), or
-- Stored.NOT_RUNNING when the run is not running (what was computed is stored all the
-- same, so a resume does not call it again, and never past the expiry of the run's keys).
-- @include "run"
local run_ttl = ARGV[1]
local FIRST_PAIR = 2

local Stored = {STORED = 1, KEPT = 0, NOT_RUNNING = -1, IGNORED = -2}

local status = redis.call('HGET', K.run, 'status')
if status ~= 'running' then
  if status then
    for i = FIRST_PAIR, #ARGV, 2 do
      redis.call('HSETNX', K.results, ARGV[i], ARGV[i + 1])
    end
    adopt_run_ttl({K.results})
  end
  return Stored.NOT_RUNNING
end
local stored = 0
for i = FIRST_PAIR, #ARGV, 2 do
  stored = stored + redis.call('HSETNX', K.results, ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', K.results, run_ttl)
return stored
