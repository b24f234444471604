-- lib/counts.lua: how many of the run's graph nodes are in each state, kept as fields
-- "#<state>" of the node state (K.nodes) by every script that sets a node's state, so a
-- run's summary reads a few fields whatever its size (model/status.py's NodeCounts reads
-- them; a full recount of the "<node>:state" fields must always agree). Counted: the
-- graph's nodes; not the units of a map ("<node>#<i>", "<node>@<j>") nor the steps that
-- follow the end of the graph (lib/run.lua). A node with no state is pending: the run
-- record's "nodes" less every count. Generic over state names: a script that sets a new
-- state counts it the same way.
--
-- A script on the path of every step folds the counts into the HMGET and HSET of K.nodes
-- it makes anyway (count_fields, counts_read, then counts_into); elsewhere set_state
-- writes a state and its counts (HINCRBY) together.
-- @include "run"

local COUNT_READ = {}   -- state -> its count, read by this script (folded writes)
local COUNT_MOVES = {}  -- state -> change not written yet

-- True when ``field``'s state is counted: a graph node, not a unit of a map.
local function counted(field)
  return not string.find(field, '[#@]')
end

-- ``into`` (a list of K.nodes fields to read) with the count fields of ``states`` added.
local function count_fields(into, states)
  for _, s in ipairs(states) do
    into[#into + 1] = '#' .. s
  end
  return into
end

-- What an HMGET answered for the count fields of ``states``, from position ``from``.
local function counts_read(states, values, from)
  for i, s in ipairs(states) do
    COUNT_READ[s] = tonumber(values[from + i - 1] or '0')
  end
end

-- ``field`` goes from state ``old`` (false or nil: none) to ``new`` (nil: none).
local function count_move(field, old, new)
  if old == new or not counted(field) then
    return
  end
  if old then
    COUNT_MOVES[old] = (COUNT_MOVES[old] or 0) - 1
  end
  if new then
    COUNT_MOVES[new] = (COUNT_MOVES[new] or 0) + 1
  end
end

-- Write the moves counted so far: the counts this script read go into ``writes`` (field,
-- value pairs of the HSET of K.nodes the caller makes next), the others by HINCRBY.
local function counts_into(writes)
  local states = {}
  for s, d in pairs(COUNT_MOVES) do
    if d ~= 0 then
      states[#states + 1] = s
    end
  end
  table.sort(states)  -- the same writes in the same order on every replica
  for _, s in ipairs(states) do
    local d = COUNT_MOVES[s]
    if COUNT_READ[s] then
      COUNT_READ[s] = COUNT_READ[s] + d
      writes[#writes + 1] = '#' .. s
      writes[#writes + 1] = COUNT_READ[s]
    else
      redis.call('HINCRBY', K.nodes, '#' .. s, d)
    end
  end
  COUNT_MOVES = {}
  return writes
end

-- Set ``field``'s state from ``old`` (what the caller read; false: none) to ``new``, with
-- the field, value pairs ``...`` in the same HSET, and count the move.
local function set_state(field, old, new, ...)
  count_move(field, old, new)
  redis.call('HSET', K.nodes, unpack(counts_into({field .. ':state', new, ...})))
end

-- Set the state of a step after the graph (not counted) to ``new``, with ``...``.
local function set_step_state(field, new, ...)
  redis.call('HSET', K.nodes, field .. ':state', new, ...)
end
