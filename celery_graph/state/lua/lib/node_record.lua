-- lib/node_record.lua: "<field>:run" in the node state (K.nodes) packs what the latest
-- attempt at a node, or at a unit of a map, recorded: "attempts|started|finished|worker"
-- (times are server time as text; the worker is a Celery hostname). model/status.py's
-- NodeRecord reads the same text.
-- @include "run"

-- The hash field that holds ``field``'s record.
local function record_field(field)
  return field .. ':run'
end

-- A record's text (or false: none yet) as strings ({attempts = '0', ...} for none).
local function parse_record(raw)
  if not raw then
    return {attempts = '0', started = '', finished = '', worker = ''}
  end
  local a, s, f, w = string.match(raw, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
  return {attempts = a, started = s, finished = f, worker = w}
end

-- The record of ``field``, as strings ({attempts = '0', ...} when there is none).
local function read_record(field)
  return parse_record(redis.call('HGET', K.nodes, record_field(field)))
end

-- The text of a record.
local function pack_record(r)
  return r.attempts .. '|' .. r.started .. '|' .. r.finished .. '|' .. r.worker
end

-- ``field``'s latest attempt finished at ``when`` (text).
local function record_finished(field, when)
  local r = read_record(field)
  r.finished = when
  redis.call('HSET', K.nodes, record_field(field), pack_record(r))
end
