"""The reads behind run listings (the dashboard's runs page): the secondary indexes of
runs and the summary fields of many run records at once.

The indexes (``keys.py``: every run by creation time, runs by flow, runs by final state,
the flow list and the marker since when they are written) are written by ``RunStore`` (at
submission, when a run ends, when it resumes) and read here; the running index is the
reconciler's. An index entry is a hint only: the run record decides (an entry may outlive
its run or lag a resume). Every Redis error leaves translated (``StoreUnavailable``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..codec import parse_error
from ..errors import CorruptRecord
from ..keys import Keys
from ..model import count_field, record_field
from .connection import translated

# the fields of a run record a listing filters on, and those it shows
FILTER_FIELDS = ("status", "graph", "created", "flow")
# the node states a run's listing counts as done (a skip is one: "skipping", not passed on)
DONE_STATES = ("succeeded", "skipped", "skipping")

SUMMARY_FIELDS = (
    *FILTER_FIELDS,
    "finished",
    "nodes",
    "error",
    "resumed",
    "parent",
    "limit_scope",
    "limit_group",
    "counted",
)


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
    def problem(self) -> str | None:
        """Why this record cannot be listed (one of its fields read here does not parse:
        written by something other than celery-graph), or None."""
        try:
            for name, parse in (("created", float), ("finished", float), ("resumed", float)):
                record_field(self.run_id, self.fields, name, parse, required=name == "created")
            record_field(self.run_id, self.fields, "nodes", int)
        except CorruptRecord as exc:
            return str(exc)
        return None

    @property
    def error(self) -> dict[str, Any] | None:
        try:
            return parse_error(self.fields.get("error"))
        except ValueError:
            return {"type": "Error", "message": self.fields.get("error", "")}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RunIndex:
    """Named reads of the run indexes and of run records in bulk."""

    def __init__(self, client: Any, keys: Keys, time: Callable[[], float]) -> None:
        self.client = client
        self.keys = keys
        self.time = time  # the Redis server's clock (RunStore.time)

    # -- index listings ----------------------------------------------------------------

    def indexed_since(self) -> float | None:
        """Server time since which the engine writes the secondary indexes, or None."""
        raw = translated(
            "reading the index marker", lambda: self.client.get(self.keys.index_marker())
        )
        return float(raw) if raw else None

    def runs_key(self) -> str:
        """The index of every run, by creation time."""
        return self.keys.runs_index()

    def flow_key(self, flow: str) -> str:
        """The index of the runs of one flow."""
        return self.keys.flow_runs(flow)

    def state_key(self, state: str) -> str:
        """The index of the runs that ended in one final state."""
        return self.keys.state_runs(state)

    def range_desc(
        self,
        key: str,
        high: float,
        low: float,
        offset: int,
        count: int,
        *,
        low_exclusive: bool = False,
    ) -> list[tuple[str, float]]:
        """Members of zset ``key`` with low <= score <= high, newest first."""
        lo = f"({low!r}" if low_exclusive else repr(low)
        hi = "+inf" if high == float("inf") else repr(high)
        if low == float("-inf"):
            lo = "-inf"
        raw = translated(
            "listing runs",
            lambda: self.client.zrevrangebyscore(
                key, hi, lo, start=offset, num=count, withscores=True
            ),
        )
        return [(_text(m), float(s)) for m, s in raw]

    def count(self, key: str, low: float, high: float, *, high_exclusive: bool = False) -> int:
        lo = "-inf" if low == float("-inf") else repr(low)
        hi = "+inf" if high == float("inf") else ("(" if high_exclusive else "") + repr(high)
        return int(translated("counting runs", lambda: self.client.zcount(key, lo, hi)))

    def running_ids(self, limit: int) -> list[str]:
        """Runs the reconciler still watches (running ones, and ended ones not yet
        forgotten), at most ``limit``."""
        raw = translated(
            "reading the running index",
            lambda: self.client.zrange(self.keys.running_index(), 0, limit - 1),
        )
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
        raw = translated(
            "listing flows", lambda: self.client.zrevrange(self.keys.flows_index(), 0, limit - 1)
        )
        return [_text(m) for m in raw]

    # -- a flow's stats ----------------------------------------------------------------

    def flow_stats(self, flow: str, since: float, now: float) -> dict[str, Any]:
        """How the runs of ``flow`` that ended between ``since`` and ``now`` (server time)
        went, from its per-day counters (never a scan of runs): ``runs``, the count by
        outcome, ``success_rate`` (None with no run) and the duration percentiles ``p50``,
        ``p95`` and ``p99`` (a bucket's upper bound, seconds; None with no run). Hours are
        whole: ``since`` counts from the start of its hour."""
        first, last = int(since // 86400), int(now // 86400)
        keys = [self.keys.flow_stats(flow, day) for day in range(first, last + 1)]

        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            return list(pipe.execute())

        low = int(since // 3600)
        outcomes = {"succeeded": 0, "failed": 0, "cancelled": 0}
        buckets: dict[float, int] = {}
        for raw in translated("reading a flow's stats", read):
            for field, value in raw.items():
                hour, _, what = _text(field).partition("|")
                if int(hour) < low:
                    continue
                if what.startswith("b|"):
                    le = float(what[2:])  # "+Inf" parses as inf
                    buckets[le] = buckets.get(le, 0) + int(value)
                elif what in outcomes:
                    outcomes[what] += int(value)
        runs = sum(outcomes.values())
        ordered = sorted(buckets.items())
        total = sum(n for _, n in ordered)

        def quantile(q: float) -> float | None:
            seen = 0
            for le, n in ordered:
                seen += n
                if total and seen >= q * total:
                    return None if le == float("inf") else le  # past the last bound
            return None

        return {
            "runs": runs,
            **outcomes,
            "success_rate": outcomes["succeeded"] / runs if runs else None,
            "p50": quantile(0.5),
            "p95": quantile(0.95),
            "p99": quantile(0.99),
        }

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
            out.append(
                RunRow(run_id, {f: _text(v) for f, v in zip(fields, values) if v is not None})
            )
        return out

    def summaries(self, run_ids: Sequence[str]) -> list[tuple[RunRow | None, int]]:
        """The summary fields of each run and how many of its nodes are done, in one round
        trip: the nodes the graph state counts as succeeded or skipped (lib/counts.lua), or,
        for a run started without counts, how many results it stored (nodes and map items)."""
        if not run_ids:
            return []
        done_fields = [count_field(s) for s in DONE_STATES]

        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for run_id in run_ids:
                pipe.hmget(self.keys.run(run_id), SUMMARY_FIELDS)
                pipe.hlen(self.keys.results(run_id))
                pipe.hmget(self.keys.nodes(run_id), done_fields)
            return list(pipe.execute())

        replies = translated("reading runs", read)
        out: list[tuple[RunRow | None, int]] = []
        for i, run_id in enumerate(run_ids):
            values, count, done = replies[3 * i], int(replies[3 * i + 1]), replies[3 * i + 2]
            if values[0] is None:
                out.append((None, 0))
                continue
            fields = {f: _text(v) for f, v in zip(SUMMARY_FIELDS, values) if v is not None}
            if fields.get("counted"):
                count = sum(int(n) for n in done if n is not None)
            out.append((RunRow(run_id, fields), count))
        return out

    def positions(self, rows: Sequence[RunRow]) -> dict[str, int]:
        """{run id: its place in line (1: next)} of the queued runs among ``rows`` (runs
        waiting for a slot of their flow's concurrency limit), in one round trip."""
        queued = [
            r
            for r in rows
            if r.status == "queued" and r.fields.get("limit_scope") and r.fields.get("limit_group")
        ]
        if not queued:
            return {}

        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for r in queued:
                layout = self.keys.limit_layout(r.fields["limit_scope"], r.fields["limit_group"])
                pipe.zrank(layout.queue, r.run_id)
            return list(pipe.execute())

        ranks = translated("reading queue positions", read)
        return {r.run_id: int(rank) + 1 for r, rank in zip(queued, ranks) if rank is not None}
