"""The node counts the scripts keep (fields "#<state>" of a run's node state,
state/lua/lib/counts.lua) against a full recount of the node states, read together in one
MULTI so no script runs between the two reads. conftest.py checks every run in the test
Redis after each test that used it, so every flow the suite runs (retries, resumes,
cancels, revokes, handovers, the reconciler's re-sends, maps, branches, handlers) checks
that the counts stay exact."""

from __future__ import annotations

import json

import redis

# a run with more node fields than this is left to the tests that build it (scale tests)
MAX_FIELDS = 20_000


def _steps(record: dict[bytes, bytes]) -> set[str]:
    """The steps that follow the graph (handlers, compensations): not counted."""
    raw = record.get(b"after")
    if not raw:
        return set()
    after = json.loads(raw)
    out = {after.get("failure") or "", after.get("exit") or ""}
    out.update(step for _, step in after.get("undo", []))
    return out - {""}


def mismatch(client: redis.Redis, nodes_key: str) -> str | None:
    """What differs between the kept counts and a recount for the run whose node state is
    ``nodes_key``; None when they agree (or the run is gone)."""
    run_key = nodes_key[: -len(":nodes")]
    if client.hlen(nodes_key) > MAX_FIELDS:
        return None
    pipe = client.pipeline(transaction=True)
    pipe.hgetall(nodes_key)
    pipe.hgetall(run_key)
    fields, record = pipe.execute()
    if not record or record.get(b"unstarted"):
        return None
    steps = _steps(record)
    kept: dict[str, int] = {}
    recounted: dict[str, int] = {}
    for key, value in fields.items():
        name = key.decode()
        if name.startswith("#"):
            if int(value):
                kept[name[1:]] = int(value)
            continue
        node, _, attr = name.rpartition(":")
        if attr != "state" or "#" in node or "@" in node or node in steps:
            continue
        state = value.decode()
        recounted[state] = recounted.get(state, 0) + 1
    total = int(record.get(b"nodes", b"0"))
    if kept != recounted or sum(kept.values()) > total:
        return f"{run_key}: kept counts {kept}, recount {recounted}, {total} nodes"
    return None


def check_all(client: redis.Redis, seen: dict[str, tuple[int, bytes]]) -> list[str]:
    """Every run's counts in the Redis of ``client``; ``seen``: runs that had ended when
    checked, with what they looked like (skipped while unchanged)."""
    problems = []
    for raw in client.scan_iter(match="*:run:{*}:nodes", count=1000):
        key = raw.decode()
        run_key = key[: -len(":nodes")]
        pipe = client.pipeline(transaction=False)
        pipe.hlen(key)
        pipe.hget(run_key, "finished")
        look = tuple(pipe.execute())
        if look[1] is not None and seen.get(key) == look:
            continue
        problem = mismatch(client, key)
        if problem:
            problems.append(problem)
        elif look[1] is not None:
            seen[key] = look  # type: ignore[assignment]
    return problems
