-- worker_claim.lua: register a starting worker under its name (Celery's hostname), unless
-- another worker with that name is alive. Its two keys share the {hostname} hash tag.
--
-- KEYS[1] worker entry          (hash)  hostname, pid, node, token, queues, started, ...
-- KEYS[2] worker counters       (hash)  counters and histograms of the pool processes
-- ARGV[1] this worker's token (unique per process start)
-- ARGV[2] ttl of both keys (seconds)
-- ARGV[3] live window (seconds): an entry whose last heartbeat is younger belongs to a
--         live worker
-- ARGV[4] "1": take the name even from a live-looking entry (its owner is known dead)
-- ARGV[5] tasks in flight now, or ""
-- ARGV[6..] field, value, ... of the entry
--
-- Returns {"claimed", now} or {"live", token, pid, node, age of its heartbeat}.
-- Times are the server's (TIME), as strings of seconds with microseconds.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local nowstr = string.format('%d.%06d', t[1], t[2])
if ARGV[4] ~= '1' then
  local owner = redis.call('HMGET', KEYS[1], 'token', 'pid', 'node', 'heartbeat')
  if owner[1] and owner[1] ~= ARGV[1] and owner[4] then
    local age = now - tonumber(owner[4])
    if age < tonumber(ARGV[3]) then
      return {'live', owner[1], owner[2] or '', owner[3] or '', string.format('%.3f', age)}
    end
  end
end
redis.call('DEL', KEYS[1], KEYS[2])  -- a new start counts from zero, like a process restart
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'started', nowstr, 'heartbeat', nowstr,
           unpack(fields))
redis.call('HSET', KEYS[2], 'processed', 0)
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[2], 'in_flight', ARGV[5])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return {'claimed', nowstr}
