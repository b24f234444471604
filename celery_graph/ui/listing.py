"""The runs page's query: recent runs, filtered by state, flow and time, searched by run id
or idempotency key, paginated with a cursor.

Where the candidates come from, fastest first:

- the secondary indexes (``P:runs:flow:<flow>``, ``P:runs:state:<state>``), for the runs
  created since the engine writes them (``P:runs:indexed``);
- ``P:running`` (what the reconciler watches) for the running filter;
- otherwise ``P:runs``, read newest first in batches, each candidate's record checked
  against the filters, for at most ``budget`` candidates per request: a page that is not
  full by then says so (``partial``) and its cursor continues the scan.

Every candidate's run record decides whether it matches: an index entry is only a hint.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..client.submit import run_id_for
from ..keys import RUN_ID_RE
from ..model import FINAL_STATES
from ..state import RunIndex, RunRow
from .errors import BadRequest

STATES = ("queued", "running", *FINAL_STATES)
INF = math.inf
_HEX_PREFIX = re.compile(r"^[0-9a-f]{4,31}$")

FlowNamer = Callable[[RunRow], "str | None"]


class QueryError(BadRequest):
    """A malformed runs query; the message says which parameter and what is expected."""


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the last run's start time (its score) and id."""

    score: float
    run_id: str

    def __str__(self) -> str:
        return f"{self.score!r}:{self.run_id}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        score, sep, run_id = text.rpartition(":")
        try:
            value = float(score)
        except ValueError:
            value = math.nan
        if not sep or math.isnan(value) or not RUN_ID_RE.match(run_id):
            raise QueryError(f"cursor {text!r} is not one this API returned (<time>:<run id>)")
        return cls(value, run_id)

    def after(self, score: float, run_id: str) -> bool:
        """True if (score, run_id) comes after this cursor, newest first."""
        return score < self.score or (score == self.score and run_id < self.run_id)


@dataclass(frozen=True)
class RunQuery:
    state: str | None = None
    flow: str | None = None
    since: float | None = None  # start time, seconds since the epoch (server clock)
    until: float | None = None
    search: str | None = None  # a run id, a run id prefix, or an idempotency key
    limit: int = 50
    cursor: Cursor | None = None

    @classmethod
    def from_params(cls, get: Callable[[str], str | None]) -> RunQuery:
        """From query parameters (``get(name)`` returns the value or None)."""

        def number(name: str) -> float | None:
            raw = get(name)
            if raw in (None, ""):
                return None
            try:
                value = float(raw)
            except ValueError:
                value = math.nan
            if math.isnan(value) or math.isinf(value):
                raise QueryError(f"{name}={raw!r}: expected seconds since the epoch")
            return value

        state = get("state") or None
        if state is not None and state not in STATES:
            raise QueryError(f"state={state!r}: expected one of {', '.join(STATES)}")
        raw_limit = get("limit") or "50"
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 500:
            raise QueryError(f"limit={raw_limit!r}: expected a whole number from 1 to 500")
        cursor = get("cursor")
        return cls(
            state=state,
            flow=get("flow") or None,
            since=number("since"),
            until=number("until"),
            search=(get("q") or "").strip() or None,
            limit=int(raw_limit),
            cursor=Cursor.parse(cursor) if cursor else None,
        )


@dataclass
class RunPage:
    runs: list[dict[str, Any]]
    next: str | None  # cursor of the next page, None when the listing is exhausted
    source: str  # where candidates came from: index, index+scan, scan, running, search
    scanned: int  # candidates read
    partial: bool = False  # the scan budget ran out before the page was full
    total: int | None = None  # runs in range, when one index answers it exactly
    notes: list[str] = field(default_factory=list)
    corrupt: list[dict[str, str]] = field(default_factory=list)  # records left out, and why

    def as_json(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "next": self.next,
            "source": self.source,
            "scanned": self.scanned,
            "partial": self.partial,
            "total": self.total,
            "notes": self.notes,
            "corrupt": self.corrupt,
        }

    def flag(self, corrupt: dict[str, str]) -> RunPage:
        """Add the records left out because they do not parse (``corrupt``: run id -> why)."""
        self.corrupt = [{"run_id": rid, "problem": why} for rid, why in corrupt.items()]
        if corrupt:
            self.notes.append(
                f"left out {len(corrupt)} run record(s) that do not parse (see corrupt); "
                "something other than celery-graph wrote them"
            )
        return self


def summary(row: RunRow, flow: str | None, now: float, results: int) -> dict[str, Any]:
    """One line of the runs page; ``results``: how many of its nodes are done
    (RunIndex.summaries: the kept counts, or the results stored by a run without them)."""
    nodes = int(row.fields.get("nodes") or 0)
    finished = float(row.fields["finished"]) if row.fields.get("finished") else None
    created = row.created
    state = row.status
    # nodes with a stored result (map items count too, hence the cap); a succeeded run
    # finished every node that was not skipped
    done = nodes if state == "succeeded" else min(results, nodes)
    error = row.error
    return {
        "run_id": row.run_id,
        "flow": flow,
        "graph_id": row.fields.get("graph"),
        "state": state,
        "created": created,
        "finished": finished,
        "duration": max(0.0, (finished if finished is not None else now) - created),
        "nodes": nodes,
        "done": done,
        "resumed": "resumed" in row.fields,
        "parent": row.fields.get("parent"),  # a child run: its parent run
        "error": None
        if not error
        else {
            "node": error.get("node") or None,
            "type": error.get("type", "Error"),
            "message": str(error.get("message", ""))[:300],
        },
    }


def _corrupt(row: RunRow, corrupt: dict[str, str]) -> bool:
    """True (and noted in ``corrupt``) for a record whose fields do not parse."""
    problem = row.problem
    if problem is not None:
        corrupt[row.run_id] = problem
    return problem is not None


@dataclass(frozen=True)
class _Segment:
    key: str
    low: float
    high: float
    high_exclusive: bool = False


class RunLister:
    """Answers :class:`RunQuery` from the run indexes (``State.index``); ``namer`` gives a
    run's flow name."""

    def __init__(
        self,
        index: RunIndex,
        namer: FlowNamer,
        *,
        batch: int = 500,
        budget: int = 10_000,
        running_cap: int = 10_000,
        by_graph: Callable[[str], object] = lambda flow: None,
    ) -> None:
        self.index = index
        self.namer = namer
        # a flow named by its graph (a registered flow) also has runs started without its
        # name (a canvas, beat): its index by name is not all of them
        self.by_graph = by_graph
        self.batch = batch
        self.budget = budget
        self.running_cap = running_cap

    def page(self, q: RunQuery) -> RunPage:
        """A page of runs; a record that does not parse is left out and flagged."""
        now = self.index.time()
        corrupt: dict[str, str] = {}
        if q.search:
            return self._search(q, now, corrupt).flag(corrupt)
        if q.state == "running":
            ids = self.index.running_ids(self.running_cap + 1)
            if len(ids) <= self.running_cap:
                return self._running(q, ids, now, corrupt).flag(corrupt)
        segments, source, total = self._segments(q)
        return self._scan(q, segments, source, total, now, corrupt).flag(corrupt)

    # -- where candidates come from -------------------------------------------------------

    def _segments(self, q: RunQuery) -> tuple[list[_Segment], str, int | None]:
        low = -INF if q.since is None else q.since
        high = INF if q.until is None else q.until
        runs = self.index.runs_key()
        final = q.state if q.state in FINAL_STATES else None
        if not (q.flow or final):
            return [_Segment(runs, low, high)], "scan", self.index.count(runs, low, high)
        marker = self.index.indexed_since()
        if marker is None or marker > high:
            return [_Segment(runs, low, high)], "scan", None
        choices = []
        if q.flow and not self.by_graph(q.flow):
            choices.append(self.index.flow_key(q.flow))
        if final:
            choices.append(self.index.state_key(final))
        if not choices:
            return [_Segment(runs, low, high)], "scan", None
        sizes = {k: self.index.count(k, max(low, marker), high) for k in choices}
        key = min(choices, key=sizes.__getitem__)
        segments = [_Segment(key, max(low, marker), high)]
        if low < marker and self.index.count(runs, low, marker, high_exclusive=True):
            # runs from before the indexes: read on through the run index
            segments.append(_Segment(runs, low, marker, high_exclusive=True))
            return segments, "index+scan", None
        # one index answers exactly up to stale entries (a resumed run, an expired one)
        return segments, "index", sizes[key] if len(choices) == 1 else None

    def _candidates(
        self,
        segments: list[_Segment],
        cursor: Cursor | None,
    ) -> Iterator[tuple[str, float]]:
        """(run id, score) of every segment in turn, newest first, after ``cursor``."""
        for seg in segments:
            high, exclusive, skip = seg.high, seg.high_exclusive, cursor
            if cursor is not None:
                if cursor.score < seg.low:
                    continue
                if cursor.score < high or (cursor.score == high and not exclusive):
                    high, exclusive = cursor.score, False
            offset = 0
            while True:
                got = self.index.range_desc(seg.key, high, seg.low, offset, self.batch)
                for member, score in got:
                    if exclusive and score >= high:
                        continue
                    if skip is not None and not skip.after(score, member):
                        continue
                    yield member, score
                if len(got) < self.batch:
                    break
                last_member, last_score = got[-1]
                if last_score == high:  # a whole batch on one score: step over it
                    offset += len(got)
                else:
                    high, exclusive, offset = last_score, False, 0
                    skip = Cursor(last_score, last_member)

    def _scan(
        self,
        q: RunQuery,
        segments: list[_Segment],
        source: str,
        total: int | None,
        now: float,
        corrupt: dict[str, str],
    ) -> RunPage:
        out: list[tuple[RunRow, str | None]] = []
        scores: list[float] = []
        scanned = 0
        last: tuple[str, float] | None = None
        # a first chunk the size of the page: an unfiltered page is one round trip
        size = q.limit if not (q.flow or q.state) else self.batch
        candidates = self._candidates(segments, q.cursor)
        exhausted = False
        while len(out) < q.limit and not exhausted:
            if scanned >= self.budget:
                break
            chunk: list[tuple[str, float]] = []
            for item in candidates:
                chunk.append(item)
                if len(chunk) >= size:
                    break
            else:
                exhausted = True
            size = self.batch
            rows = self.index.rows([rid for rid, _ in chunk])
            for (run_id, score), row in zip(chunk, rows):
                scanned += 1
                last = (run_id, score)
                if row is None or _corrupt(row, corrupt):
                    continue
                flow = self.namer(row)
                if self._matches(q, row, flow):
                    out.append((row, flow))
                    scores.append(score)
                    if len(out) == q.limit:
                        exhausted = exhausted and run_id == chunk[-1][0]
                        break
        nxt: str | None = None
        partial = False
        if len(out) == q.limit and not exhausted:
            nxt = str(Cursor(scores[-1], out[-1][0].run_id))
        elif not exhausted and last is not None:
            partial = True
            nxt = str(Cursor(last[1], last[0]))
        page = RunPage(self._summaries(out, now, corrupt), nxt, source, scanned, partial, total)
        if partial:
            page.notes.append(
                f"read {scanned} runs without filling the page; the next page reads on"
            )
        return page

    def _running(self, q: RunQuery, ids: list[str], now: float, corrupt: dict[str, str]) -> RunPage:
        rows = [r for r in self.index.rows(ids) if r is not None and not _corrupt(r, corrupt)]
        found = []
        for row in rows:
            flow = self.namer(row)
            if self._matches(q, row, flow):
                found.append((row.created, row.run_id, row, flow))
        found.sort(key=lambda t: (t[0], t[1]), reverse=True)
        if q.cursor is not None:
            cur = q.cursor
            found = [t for t in found if cur.after(t[0], t[1])]
        page = found[: q.limit]
        nxt = str(Cursor(page[-1][0], page[-1][1])) if len(found) > q.limit else None
        return RunPage(
            self._summaries([(r, f) for _, _, r, f in page], now, corrupt),
            nxt,
            "running",
            len(ids),
            total=len(found) if q.cursor is None else None,
        )

    def _search(self, q: RunQuery, now: float, corrupt: dict[str, str]) -> RunPage:
        text = q.search or ""
        lowered = text.lower()
        tried: list[tuple[str, str]] = []  # (run id, how it matched)
        if RUN_ID_RE.match(lowered):
            tried.append((lowered, "run id"))
        elif _HEX_PREFIX.match(lowered):
            tried += [
                (rid, "run id prefix") for rid in self.index.ids_with_prefix(lowered, q.limit)
            ]
        tried.append((run_id_for(text), "idempotency key"))
        unique = list({rid: (rid, how) for rid, how in reversed(tried)}.values())[::-1]
        rows = self.index.rows([rid for rid, _ in unique])
        found = [
            (row, how)
            for (_rid, how), row in zip(unique, rows)
            if row is not None and not _corrupt(row, corrupt)
        ]
        matched = {row.run_id: how for row, how in found}
        out = self._summaries([(row, self.namer(row)) for row, _ in found], now, corrupt)
        for line in out:
            line["matched"] = matched[line["run_id"]]
        out.sort(key=lambda r: r["created"], reverse=True)
        return RunPage(out[: q.limit], None, "search", len(unique), total=len(out))

    def _summaries(
        self,
        rows: list[tuple[RunRow, str | None]],
        now: float,
        corrupt: dict[str, str],
    ) -> list[dict[str, Any]]:
        """The page's lines, from the full summary fields of the runs that matched (a run
        that expired since it matched is left out, and so is one whose record does not
        parse: it goes to ``corrupt``)."""
        read = self.index.summaries([row.run_id for row, _ in rows])
        positions = self.index.positions([full for full, _ in read if full is not None])
        out = [
            summary(full, flow, now, count)
            for (_row, flow), (full, count) in zip(rows, read)
            if full is not None and not _corrupt(full, corrupt)
        ]
        for line in out:
            line["position"] = positions.get(line["run_id"])
        return out

    @staticmethod
    def _matches(q: RunQuery, row: RunRow, flow: str | None) -> bool:
        if q.state and row.status != q.state:
            return False
        if q.flow and flow != q.flow:
            return False
        if q.since is not None and row.created < q.since:
            return False
        return not (q.until is not None and row.created > q.until)
