"""Helpers for the dashboard's tests: an HTTP client for its API, gates that hold nodes
running, and records shaped like the engine's for listings at scale. (The fixtures are
in tests/support/ui_fixtures.py, Chromium in tests/support/browser.py.)"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

from tests.ui_tasks import gate_key

FLOWER = "http://flower.test:5555"


class Http:
    """A small client for the dashboard's JSON API."""

    def __init__(self, base: str, auth: str | None = None) -> None:
        self.base = base
        self.auth = auth

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        data = None
        hdrs = dict(headers or {})
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if self.auth:
            hdrs["Authorization"] = "Basic " + base64.b64encode(self.auth.encode()).decode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw, status = resp.read(), resp.status
        except urllib.error.HTTPError as err:
            raw, status = err.read(), err.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode()

    def get(self, path: str) -> Any:
        status, data = self.request("GET", path)
        assert status == 200, (path, status, data)
        return data

    def post(self, path: str, body: Any = None) -> Any:
        status, data = self.request("POST", path, {} if body is None else body)
        assert status in (200, 201), (path, status, data)
        return data


class Gates:
    """Tokens that let ``ui_gate`` nodes finish; whatever a test leaves held is released
    at the end, so no worker thread stays blocked."""

    def __init__(self, client: Any, key: str) -> None:
        self.client = client
        self.key = key
        self.released = 0

    def release(self, n: int = 1) -> None:
        self.client.rpush(gate_key(self.key), *["go"] * n)
        self.released += n


# -- run records shaped like the engine's, for listings at scale ------------------------

# Writes ``count`` run records and the run index in one call: run i has id
# <hex of i, 32 digits>, score base - i * step (a few share one score: ties), status and
# flow cycling through the lists given; running runs are in the reconciler's index too.
# Test data only (keys are built here, not passed).
SEED = """
local prefix, count, base, step = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local states = cjson.decode(ARGV[5])
local flows = cjson.decode(ARGV[6])
local ties = tonumber(ARGV[7])
local first = tonumber(ARGV[9])
for i = first, math.min(first + tonumber(ARGV[10]), count) - 1 do
  local id = string.format('%032x', i + 1)
  local score = base - math.floor(i / ties) * step
  local state = states[(i % #states) + 1]
  local flow = flows[(i % #flows) + 1]
  local created = string.format('%.6f', score)
  local key = prefix .. ':run:{' .. id .. '}'
  redis.call('HSET', key, 'status', state, 'graph', ARGV[8],
             'created', created, 'nodes', '4', 'sinks', '["load"]', 'inputs', '{}', 'flow', flow)
  if state ~= 'running' then
    redis.call('HSET', key, 'finished', string.format('%.6f', score + 1))
  else
    redis.call('ZADD', prefix .. ':running', score + 30, id)  -- the reconciler's index
  end
  redis.call('ZADD', prefix .. ':runs', score, id)
end
return count
"""
# runs one SEED call writes: a call is one script, which holds the server; a long one
# makes every other client (the worker's heartbeat, its reconciler) get BUSY under load
SEED_CHUNK = 5_000

UNSEED = """
local prefix = ARGV[1]
local ids = redis.call('ZRANGE', prefix .. ':runs', 0, tonumber(ARGV[2]) - 1)
for _, id in ipairs(ids) do
  redis.call('UNLINK', prefix .. ':run:{' .. id .. '}')
  redis.call('ZREM', prefix .. ':runs', id)
end
return #ids
"""


# Writes the secondary indexes for the seeded runs from ARGV[2] on, as the engine would
# (key names come from keys.py, in ARGV).
INDEX = """
local runs, since = ARGV[1], ARGV[2]
local states, flows = cjson.decode(ARGV[3]), cjson.decode(ARGV[4])
local flow_list, marker, record = ARGV[5], ARGV[6], ARGV[7]
local offset, count = ARGV[8], ARGV[9]
local ids = redis.call('ZRANGEBYSCORE', runs, since, '+inf', 'WITHSCORES', 'LIMIT', offset, count)
for i = 1, #ids, 2 do
  local id, score = ids[i], ids[i + 1]
  local rec = redis.call('HMGET', record .. '{' .. id .. '}', 'status', 'flow')
  if rec[1] then
    if rec[2] and flows[rec[2]] then
      redis.call('ZADD', flows[rec[2]], score, id)
      redis.call('ZADD', flow_list, score, rec[2])
    end
    if states[rec[1]] then
      redis.call('ZADD', states[rec[1]], score, id)
    end
  end
end
redis.call('SET', marker, since)
return #ids / 2
"""


def index_runs(client: Any, store: Any, since: float, flows: list[str]) -> None:
    """Index the runs of ``store``'s prefix from ``since`` on (in bulk)."""
    keys = store.keys
    states = {s: keys.state_runs(s) for s in ("succeeded", "failed", "cancelled")}
    done = 0
    while True:  # SEED_CHUNK runs a call (see SEED_CHUNK)
        indexed = client.eval(
            INDEX,
            0,
            keys.runs_index(),
            repr(since),
            json.dumps(states),
            json.dumps({f: keys.flow_runs(f) for f in flows}),
            keys.flows_index(),
            keys.index_marker(),
            keys.run("").removesuffix("{}"),
            done,
            SEED_CHUNK,
        )
        done += indexed
        if indexed < SEED_CHUNK:
            return


def seed_runs(
    client: Any,
    prefix: str,
    count: int,
    *,
    base: float,
    step: float = 1.0,
    states: list[str],
    flows: list[str],
    ties: int = 1,
    graph: str = "0" * 64,
) -> None:
    for first in range(0, count, SEED_CHUNK):
        client.eval(
            SEED,
            0,
            prefix,
            count,
            repr(base),
            repr(step),
            json.dumps(states),
            json.dumps(flows),
            ties,
            graph,
            first,
            SEED_CHUNK,
        )


def unseed_runs(client: Any, prefix: str) -> None:
    while client.eval(UNSEED, 0, prefix, SEED_CHUNK):
        pass
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.unlink(*keys)
