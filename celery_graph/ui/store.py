"""The dashboard's reads of Redis beyond what ``RunStore`` offers, in one place.

Everything goes through ``State.client`` (redis-py, bytes replies) and every Redis error
leaves translated (``StoreUnavailable``). This module is written so the engine can take it
over into ``state/``: its key names belong in ``keys.py``, its verbs in ``state/runs.py``.

Secondary indexes of runs (written by the engine, read here; see docs/ui.md)::

    P:runs:flow:<flow>      zset  run id -> created (server time), written at submission
    P:runs:state:<state>    zset  run id -> created, for succeeded / failed / cancelled,
                                  written when the run ends, removed when it is resumed
    P:flows                 zset  flow name -> last submission (server time)
    P:runs:indexed          string  server time since which the three above are written

All four are trimmed and expired like ``P:runs``. The reading side takes an index entry
as a hint only: the run record decides (an entry may outlive its run or lag a resume).
``index_submitted`` and ``index_ended`` below are the writing side, for the engine to call
(the tests call them to stand in for it).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..codec import parse_error
from ..keys import RUN_ID_RE, Keys
from ..model import FINAL_STATES
from ..state import State
from ..state.connection import translated

# the fields of a run record a listing filters on, and those it shows
FILTER_FIELDS = ("status", "graph", "created", "flow")
SUMMARY_FIELDS = (*FILTER_FIELDS, "finished", "nodes", "error", "resumed")

# a flow name is used as it is inside a key when it is made of these characters
_PLAIN_FLOW = re.compile(r"^[A-Za-z0-9_.:\-]{1,200}$")


def flow_key_part(flow: str) -> str:
    """The part of an index key that names a flow: the name itself when it is plain,
    else a digest (braces or spaces in a key would break hash tags and listings)."""
    if _PLAIN_FLOW.match(flow):
        return flow
    return "sha256." + hashlib.sha256(flow.encode()).hexdigest()[:24]


class IndexKeys:
    """Key names of the secondary indexes (to join ``keys.Keys`` in the engine)."""

    def __init__(self, keys: Keys) -> None:
        self.prefix = keys.prefix

    def flow(self, flow: str) -> str:
        return f"{self.prefix}:runs:flow:{flow_key_part(flow)}"

    def state(self, state: str) -> str:
        if state not in FINAL_STATES:
            raise ValueError(f"runs are indexed by final state only, not {state!r}")
        return f"{self.prefix}:runs:state:{state}"

    def flows(self) -> str:
        return f"{self.prefix}:flows"

    def marker(self) -> str:
        return f"{self.prefix}:runs:indexed"


@dataclass(frozen=True)
class RunRow:
    """One run as a listing reads it: its record's summary fields."""

    run_id: str
    fields: dict[str, str]

    @property
    def status(self) -> str:
        return self.fields.get("status", "")

    @property
    def created(self) -> float:
        return float(self.fields.get("created") or 0.0)

    @property
    def error(self) -> dict[str, Any] | None:
        try:
            return parse_error(self.fields.get("error"))
        except ValueError:
            return {"type": "Error", "message": self.fields.get("error", "")}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class UiStore:
    """Named reads (and the reference index writes) over one ``State``."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.client = state.client
        self.keys = state.keys
        self.index = IndexKeys(state.keys)

    # -- index listings ----------------------------------------------------------------

    def indexed_since(self) -> float | None:
        """Server time since which the engine writes the secondary indexes, or None."""
        raw = translated("reading the index marker",
                         lambda: self.client.get(self.index.marker()))
        return float(raw) if raw else None

    def runs_key(self) -> str:
        return self.keys.runs_index()

    def range_desc(
        self, key: str, high: float, low: float, offset: int, count: int,
        *, low_exclusive: bool = False,
    ) -> list[tuple[str, float]]:
        """Members of zset ``key`` with low <= score <= high, newest first."""
        lo = f"({low!r}" if low_exclusive else repr(low)
        hi = "+inf" if high == float("inf") else repr(high)
        if low == float("-inf"):
            lo = "-inf"
        raw = translated(
            "listing runs",
            lambda: self.client.zrevrangebyscore(key, hi, lo, start=offset, num=count,
                                                 withscores=True),
        )
        return [(_text(m), float(s)) for m, s in raw]

    def count(self, key: str, low: float, high: float, *, high_exclusive: bool = False) -> int:
        lo = "-inf" if low == float("-inf") else repr(low)
        hi = "+inf" if high == float("inf") else ("(" if high_exclusive else "") + repr(high)
        return int(translated("counting runs", lambda: self.client.zcount(key, lo, hi)))

    def cardinality(self, key: str) -> int:
        return int(translated("counting runs", lambda: self.client.zcard(key)))

    def running_ids(self, limit: int) -> list[str]:
        """Runs the reconciler still watches (running ones, and ended ones not yet
        forgotten), at most ``limit``."""
        raw = translated("reading the running index",
                         lambda: self.client.zrange(self.keys.running_index(), 0, limit - 1))
        return [_text(m) for m in raw]

    def ids_with_prefix(self, prefix: str, limit: int) -> list[str]:
        """Run ids of the run index that start with ``prefix`` (hex), at most ``limit``."""
        found: list[str] = []

        def scan() -> None:
            for member, _score in self.client.zscan_iter(
                self.runs_key(), match=f"{prefix}*", count=5000
            ):
                found.append(_text(member))
                if len(found) >= limit:
                    return

        translated("searching runs", scan)
        return found

    def flow_names(self, limit: int = 200) -> list[str]:
        """Flow names from ``P:flows`` (written by the engine at submission), newest first."""
        raw = translated("listing flows",
                         lambda: self.client.zrevrange(self.index.flows(), 0, limit - 1))
        return [_text(m) for m in raw]

    # -- run records -------------------------------------------------------------------

    def rows(
        self, run_ids: Sequence[str], fields: Sequence[str] = FILTER_FIELDS
    ) -> list[RunRow | None]:
        """``fields`` of each run record (status first) in one round trip; None for a run
        that expired. The fewer fields, the faster a scan reads."""
        if not run_ids:
            return []

        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for run_id in run_ids:
                pipe.hmget(self.keys.run(run_id), fields)
            return list(pipe.execute())

        out: list[RunRow | None] = []
        for run_id, values in zip(run_ids, translated("reading runs", read)):
            if values[0] is None:  # no status: the record expired (or never existed)
                out.append(None)
                continue
            out.append(RunRow(run_id, {f: _text(v) for f, v in zip(fields, values)
                                       if v is not None}))
        return out

    def summaries(self, run_ids: Sequence[str]) -> list[tuple[RunRow | None, int]]:
        """The summary fields of each run and how many results it stored (nodes and map
        items), in one round trip."""
        if not run_ids:
            return []

        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for run_id in run_ids:
                pipe.hmget(self.keys.run(run_id), SUMMARY_FIELDS)
                pipe.hlen(self.keys.results(run_id))
            return list(pipe.execute())

        replies = translated("reading runs", read)
        out: list[tuple[RunRow | None, int]] = []
        for i, run_id in enumerate(run_ids):
            values, count = replies[2 * i], int(replies[2 * i + 1])
            if values[0] is None:
                out.append((None, 0))
                continue
            fields = {f: _text(v) for f, v in zip(SUMMARY_FIELDS, values) if v is not None}
            out.append((RunRow(run_id, fields), count))
        return out

    def exists(self, run_id: str) -> bool:
        if not RUN_ID_RE.match(run_id):
            return False
        return bool(translated("reading a run",
                               lambda: self.client.exists(self.keys.run(run_id))))

    def result_size(self, run_id: str, field: str) -> int:
        """Bytes of a stored result (0 when none is stored)."""
        return int(translated("reading a result size",
                              lambda: self.client.hstrlen(self.keys.results(run_id), field)))

    def result(self, run_id: str, field: str) -> bytes | None:
        value: bytes | None = translated(
            "reading a result", lambda: self.client.hget(self.keys.results(run_id), field)
        )
        return value

    # -- the writing side, for the engine ------------------------------------------------

    def index_submitted(
        self, run_id: str, flow: str | None, created: float, run_ttl: int
    ) -> None:
        """At submission, beside ``P:runs`` (``RunStore.create``): the run under its flow,
        the flow in the flow list, the marker; trimmed and expired like ``P:runs``."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.index.marker(), repr(created), nx=True)
        pipe.expire(self.index.marker(), run_ttl)
        if flow:
            key = self.index.flow(flow)
            pipe.zadd(key, {run_id: created})
            pipe.zremrangebyscore(key, "-inf", created - run_ttl)
            pipe.expire(key, run_ttl)
            pipe.zadd(self.index.flows(), {flow: created})
            pipe.zremrangebyscore(self.index.flows(), "-inf", created - run_ttl)
            pipe.expire(self.index.flows(), run_ttl)
        translated("indexing a run", pipe.execute)

    def index_ended(self, run_id: str, status: str, created: float, run_ttl: int) -> None:
        """When a run ended (``lifecycle.after_run``, and the reconciler's look at every
        ended run): the run under its final state; idempotent."""
        key = self.index.state(status)
        pipe = self.client.pipeline(transaction=False)
        for other in FINAL_STATES:
            if other != status:
                pipe.zrem(self.index.state(other), run_id)
        pipe.zadd(key, {run_id: created})
        pipe.zremrangebyscore(key, "-inf", created - run_ttl)
        pipe.expire(key, run_ttl)
        translated("indexing a run", pipe.execute)

    def index_resumed(self, run_id: str) -> None:
        """When a run is resumed (``GraphRun.resume``): it is running again."""
        pipe = self.client.pipeline(transaction=False)
        for state in FINAL_STATES:
            pipe.zrem(self.index.state(state), run_id)
        translated("indexing a run", pipe.execute)

