"""What a run looks like from outside: its state, each node's state, and its outcome."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..codec import parse_error
from ..errors import CeleryGraphError, CorruptRecord, RunCancelled, RunFailed
from ..keys import FINAL_STATES as KEY_FINAL_STATES

FINAL_STATES = KEY_FINAL_STATES  # a run in one of them has ended

# Every state the scripts give a node ("<node>:state"; "skipping" shows as skipped). The
# scripts count the graph's nodes in each, as fields "#<state>" of the node state
# (state/lua/lib/counts.lua); a summary reads those fields, so a state the scripts set
# must be listed here (tests/test_counts.py checks the Lua against this list).
NODE_STATES = (
    "queued",
    "running",
    "retrying",
    "mapping",
    "waiting",
    "child",
    "succeeded",
    "failed",
    "skipped",
    "skipping",
)


# the fields "<node>:<attr>" of the node state a NodeStatus reads (and a map's item count)
NODE_ATTRS = (
    "state",
    "run",
    "error",
    "queued",
    "redelivered",
    "lost",
    "waiting",
    "signalled",
    "child",
    "sent",
    "items",
)


def count_field(state: str) -> str:
    """The field of the node state that counts the nodes in ``state``."""
    return f"#{state}"


def shown_state(stored: str | None, run_state: str) -> str:
    """A node's state as people see it, from the state stored for it (None: none yet,
    pending) and its run's state: "skipping" shows as skipped, and the run's outcome
    decides upstream_failed and cancelled (NOT_RUN_IN_FAILED, UNFINISHED)."""
    state = stored or "pending"
    if state == "skipping":  # released as a skip, not yet passed on
        state = "skipped"
    if run_state == "failed" and state in NOT_RUN_IN_FAILED:
        return "upstream_failed"
    if run_state == "cancelled" and state in UNFINISHED:
        return "cancelled"
    return state


def tally(total: int, counted: dict[str, int], run_state: str = "running") -> dict[str, int]:
    """Counts by state as people see them (shown_state), from the counts the scripts keep
    (``counted``: state -> count), the graph's ``total`` nodes (those with no state yet
    are pending) and the run's state. States with no node are left out."""
    out: dict[str, int] = {}
    for state, n in [*counted.items(), (None, total - sum(counted.values()))]:
        if n:
            shown = shown_state(state, run_state)
            out[shown] = out.get(shown, 0) + n
    return out


def _time(value: str | None) -> float | None:
    return float(value) if value else None


def record_field(
    run_id: str,
    record: dict[str, str],
    name: str,
    parse: Callable[[str], Any],
    *,
    required: bool = False,
) -> Any:
    """Field ``name`` of a run's record, parsed (None when absent or empty, unless
    ``required``); CorruptRecord naming the run, the field and its value otherwise."""
    raw = record.get(name)
    if not raw:
        if required:
            raise CorruptRecord(f"run {run_id}: its record has no {name!r} field")
        return None
    try:
        value = parse(raw)
    except (ValueError, TypeError) as exc:
        shown = raw if len(raw) <= 60 else raw[:60] + "..."
        raise CorruptRecord(
            f"run {run_id}: its record's {name!r} field does not parse ({shown!r}); the "
            "record was written by something other than celery-graph"
        ) from exc
    if isinstance(value, float) and not math.isfinite(value):
        raise CorruptRecord(f"run {run_id}: its record's {name!r} field is {raw!r}")
    return value


def _stamp(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


@dataclass(frozen=True)
class NodeRecord:
    """What the latest attempt at a node (or at a unit of a map) recorded: the field
    ``"<field>:run"`` of the run's node state, packed ``"attempts|started|finished|worker"``
    (server times as text, the worker's Celery hostname). The Lua scripts read and write
    the same text (state/lua/lib/node_record.lua); this is its one reader in Python.

    >>> NodeRecord.parse("2|1700000000.250000||w1@host")
    NodeRecord(attempts=2, started=1700000000.25, finished=None, worker='w1@host')
    """

    attempts: int = 0
    started: float | None = None
    finished: float | None = None
    worker: str | None = None

    @classmethod
    def parse(cls, raw: str | bytes | None) -> NodeRecord:
        """The record packed in ``raw``; an empty record when there is none."""
        if raw is None:
            return cls()
        text = raw.decode() if isinstance(raw, bytes) else raw
        attempts, started, finished, worker = [*text.split("|", 3), "", "", ""][:4]
        return cls(int(attempts or 0), _time(started), _time(finished), worker or None)

    def format(self) -> str:
        """The packed text, as the scripts write it."""
        started, finished = _stamp(self.started), _stamp(self.finished)
        return f"{self.attempts}|{started}|{finished}|{self.worker or ''}"


# Node states a run's outcome decides, read from the run's state rather than stored: a
# node left unfinished by a failed run never runs (upstream_failed), and one left
# unfinished by a cancelled run is cancelled. Resuming the run makes them what they were.
NOT_RUN_IN_FAILED = frozenset({"pending", "queued", "retrying", "mapping", "waiting", "child"})
UNFINISHED = NOT_RUN_IN_FAILED | {"running"}
HISTORY = ":history:"
HISTORY_FIELDS = ("worker", "queued", "started", "finished", "outcome", "error", "traceback")


def _history_entry(raw: str) -> tuple[int, dict[str, Any]]:
    """(attempt, entry) of one attempt kept by attempt.lua."""
    data = json.loads(raw)
    error = parse_error(data.get("error") or None)
    entry = {
        "worker": data.get("worker") or None,
        "queued": _time(data.get("queued") or None),
        "started": _time(data.get("started") or None),
        "finished": _time(data.get("finished") or None),
        "outcome": data.get("outcome") or "failed",
        "error": None
        if error is None
        else {"type": error.get("type", "Error"), "message": error.get("message", "")},
        "traceback": data.get("traceback") or (error or {}).get("traceback") or None,
    }
    return int(data["attempt"]), entry


def history_of(fields: dict[str, str]) -> dict[str, dict[int, dict[str, Any]]]:
    """{node id: {attempt: entry}} of the attempts attempt.lua kept (map units left out)."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for key, raw in fields.items():
        node, sep, _n = key.partition(HISTORY)
        if sep and "#" not in node and "@" not in node:
            attempt, entry = _history_entry(raw)
            out.setdefault(node, {})[attempt] = entry
    return out


@dataclass(frozen=True)
class NodeStatus:
    """One node of a run. ``state``: pending (not released yet), queued (published, not
    started), running, retrying (waiting for a retry), mapping (a map waiting for its
    items), waiting (a wait_for() node waiting for its signal), child (waiting for the
    child run it started), succeeded, failed, skipped (a branch not taken),
    upstream_failed (left unfinished by a failed run: it never runs), cancelled (left
    unfinished by a cancelled run). ``history``: every attempt, oldest first
    (``attempts`` counts them), each with its ``worker``, ``queued``, ``started``,
    ``finished``, ``outcome``, ``error`` and ``traceback``."""

    state: str
    attempts: int = 0
    worker: str | None = None
    started: float | None = None
    finished: float | None = None
    error: dict[str, Any] | None = None  # a member that failed under its group's policy
    queued: float | None = None  # when it was last published (server time)
    lease: float | None = None  # when the reconciler acts unless it progresses
    redelivered: int = 0  # times the reconciler published it again
    lost: int = 0  # times its worker died while running it
    waiting_since: float | None = None  # a wait_for() node: since when it waits (server time)
    signalled: float | None = None  # a wait_for() node: when its signal came
    child: str | None = None  # the child run the node started (child(flow))
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_fields(
        cls,
        node_id: str,
        fields: dict[str, str],
        lease: float | None = None,
        kept: dict[int, dict[str, Any]] | None = None,
        run_state: str = "running",
    ) -> NodeStatus:
        """One node's status from the run's node-state hash ("<node>:<field>" -> value;
        "<node>:run" is a NodeRecord), the attempts kept in its history (``kept``) and the
        state of its run (which decides upstream_failed and cancelled)."""
        state = shown_state(fields.get(f"{node_id}:state"), run_state)
        record = NodeRecord.parse(fields.get(f"{node_id}:run"))
        error = parse_error(fields.get(f"{node_id}:error"))
        history = [kept[n] for n in sorted(kept)] if kept else []
        if record.attempts and (not kept or record.attempts not in kept):
            # the latest attempt, when it ended otherwise than attempt.lua keeps (it
            # succeeded, or it is still going)
            history.append(
                {
                    "worker": record.worker,
                    "queued": _time(fields.get(f"{node_id}:sent")),
                    "started": record.started,
                    "finished": record.finished,
                    "outcome": state,
                    "error": None
                    if error is None
                    else {"type": error.get("type", "Error"), "message": error.get("message", "")},
                    "traceback": (error or {}).get("traceback") or None,
                }
            )
        return cls(
            state=state,
            attempts=record.attempts,
            worker=record.worker,
            started=record.started,
            finished=record.finished,
            error=error,
            queued=_time(fields.get(f"{node_id}:queued")),
            lease=lease,
            redelivered=int(fields.get(f"{node_id}:redelivered", 0)),
            lost=int(fields.get(f"{node_id}:lost", 0)),
            waiting_since=_time(fields.get(f"{node_id}:waiting")),
            signalled=_time(fields.get(f"{node_id}:signalled")),
            child=fields.get(f"{node_id}:child"),
            history=history,
        )

    def waiting(self, now: float) -> str | None:
        """Why an unfinished node has not moved on, for people: how long it has waited and
        what the reconciler does next; None for a node that ended or is not released."""
        if self.state == "child":
            return f"waits for its child run {self.child}"
        if self.state == "waiting" and self.waiting_since is not None:
            until = f", times out in {_age(self.lease - now)}" if self.lease else ""
            return f"waits for its signal, for {_age(now - self.waiting_since)}{until}"
        if self.state not in ("queued", "running", "retrying"):
            return None
        parts = []
        if self.state == "queued" and self.queued is not None:
            parts.append(f"queued {_age(now - self.queued)}")
        if self.redelivered:
            parts.append(f"re-sent {self.redelivered}x")
        if self.lost:
            parts.append(f"worker lost {self.lost}x")
        if self.lease is not None:
            if self.lease <= now and self.state == "running":
                parts.append(
                    f"lease ran out {_age(now - self.lease)} ago: its worker is gone, "
                    "the reconciler sends it again"
                )
            elif self.lease <= now:
                parts.append(
                    f"lease ran out {_age(now - self.lease)} ago: sent again unless "
                    "its queue is busy"
                )
            elif self.state != "running":
                parts.append(f"reconciler checks in {_age(self.lease - now)}")
        return ", ".join(parts) or None


def recount(nodes: dict[str, NodeStatus]) -> dict[str, int]:
    """{state: number of nodes}, counted node by node (what the kept counts must equal)."""
    out: dict[str, int] = {}
    for n in nodes.values():
        out[n.state] = out.get(n.state, 0) + 1
    return out


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


@dataclass(frozen=True)
class RunStatus:
    run_id: str
    state: str  # queued (waiting for a concurrency slot), running, finishing (its handlers
    # run), succeeded, failed, cancelled
    graph_id: str
    created: float
    finished: float | None
    nodes: dict[str, NodeStatus] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    now: float | None = None  # the server's clock when this was read
    flow: str | None = None  # the flow name the run records (flow.with_name, a workflow)
    # the steps that follow the end of the graph (compensations, handlers): id -> status,
    # and id -> its role ("compensates <node>", "on_failure", "on_exit")
    steps: dict[str, NodeStatus] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    outcome: str | None = None  # while finishing: the final state to come
    parent: str | None = None  # a child run: its parent run
    parent_node: str | None = None  # ... and the node of the parent that started it
    # the child runs its nodes started: node id (or "<node>#<i>", an item of a map) -> run
    children: dict[str, str] = field(default_factory=dict)
    position: int | None = None  # queued: its place among the runs waiting for a slot (1: next)
    # a summary (RunStatus.summarised): the counts the scripts keep and the graph's size,
    # with no node read (``nodes`` is empty)
    tally: dict[str, int] | None = None
    size: int | None = None

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def summary(self) -> bool:
        """True when this is a summary: counts, no nodes."""
        return self.tally is not None

    @property
    def total(self) -> int:
        """How many nodes the graph has."""
        return self.size if self.size is not None else len(self.nodes)

    def counts(self) -> dict[str, int]:
        """{state: number of nodes}: in a summary, the counts the scripts keep; else a
        recount of every node read."""
        if self.tally is not None:
            return dict(self.tally)
        return recount(self.nodes)

    def as_json(self) -> dict[str, Any]:
        """The document of ``celery-graph status --json`` (and the core of the dashboard's
        run answer): every node, whatever the size of the run."""
        return {
            "run_id": self.run_id,
            "state": self.state,
            "flow": self.flow,
            "graph_id": self.graph_id,
            "created": self.created,
            "finished": self.finished,
            "position": self.position,
            "error": self.error,
            "counts": self.counts(),
            "nodes": {nid: asdict(n) for nid, n in self.nodes.items()},
            "outcome": self.outcome,
            "parent": self.parent,
            "parent_node": self.parent_node,
            "children": self.children,
            # wait_for() nodes waiting now: what for (a signal of their id) and since when
            "waits": {
                nid: {"signal": nid, "since": n.waiting_since, "timeout_at": n.lease}
                for nid, n in self.nodes.items()
                if n.state == "waiting"
            },
            "steps": {
                sid: {"role": self.roles.get(sid, ""), **asdict(n)} for sid, n in self.steps.items()
            },
        }

    @classmethod
    def from_state(
        cls,
        run_id: str,
        record: dict[str, str],
        fields: dict[str, str],
        order: tuple[str, ...],
        leases: dict[str, float] | None = None,
        now: float | None = None,
        roles: dict[str, str] | None = None,
        position: int | None = None,
    ) -> RunStatus:
        """From the run record, the node-state hash, the leases and the graph's node order.
        A field that does not parse (a record written by something else) is CorruptRecord,
        naming the run and the field."""
        leases = leases or {}
        nodes = {}
        run_state = record.get("status") or "running"
        try:
            kept = history_of(fields)
        except (ValueError, TypeError, KeyError) as exc:
            raise CorruptRecord(
                f"run {run_id}: a node's attempt history does not parse ({exc})"
            ) from exc
        for nid in order:
            try:
                nodes[nid] = NodeStatus.from_fields(
                    nid, fields, leases.get(nid), kept.get(nid), run_state
                )
            except (ValueError, TypeError) as exc:
                raise CorruptRecord(
                    f"run {run_id}: the state of node {nid!r} does not parse ({exc})"
                ) from exc
        roles = roles or {}
        steps = {
            sid: NodeStatus.from_fields(sid, fields, leases.get(sid))
            for sid in roles
            if f"{sid}:state" in fields
        }
        created = record_field(run_id, record, "created", float, required=True)
        return cls(
            run_id=run_id,
            state=record_field(run_id, record, "status", str, required=True),
            # a run recorded as unable to start may have no graph (refuse.lua)
            graph_id=record_field(
                run_id, record, "graph", str, required=not record.get("unstarted")
            )
            or "",
            created=created,
            finished=record_field(run_id, record, "finished", float),
            nodes=nodes,
            error=record_field(run_id, record, "error", parse_error),
            now=now,
            flow=record.get("flow") or None,
            steps=steps,
            roles=roles,
            outcome=(record.get("outcome") or None)
            if record.get("status") == "finishing"
            else None,
            parent=record.get("parent") or None,
            parent_node=record.get("parent_node") or None,
            children={k[: -len(":child")]: v for k, v in fields.items() if k.endswith(":child")},
            position=position,
        )

    @classmethod
    def summarised(
        cls,
        run_id: str,
        record: dict[str, str],
        counted: dict[str, int],
        now: float | None = None,
        position: int | None = None,
    ) -> RunStatus:
        """A summary: the run record and the counts by state the scripts keep (state ->
        count, model NODE_STATES), whatever the size of the run; no node is read."""
        total = record_field(run_id, record, "nodes", int) or 0
        base = cls.from_state(run_id, record, {}, (), None, now, position=position)
        children = {k[len("child:") :]: v for k, v in record.items() if k.startswith("child:")}
        counts = tally(total, counted, base.state)
        return replace(base, tally=counts, size=total, children=children)

    def stalled(self) -> dict[str, str]:
        """{node id: why it waits} for every released node that has not finished."""
        if self.now is None or self.done:
            return {}
        out = {}
        for nid, node in self.nodes.items():
            why = node.waiting(self.now)
            if why:
                out[nid] = why
        return out


@dataclass(frozen=True)
class Outcome:
    """How a run ended: its final state and, when it succeeded, what ``get()`` returns."""

    run_id: str
    state: str
    value: Any = None  # the single sink's result, or {sink: result}
    error: dict[str, Any] | None = None

    def exception(self) -> CeleryGraphError:
        """RunFailed or RunCancelled for a run that did not succeed."""
        if self.state == "cancelled":
            return RunCancelled(self.run_id, (self.error or {}).get("message", ""))
        err = self.error or {}
        return RunFailed(
            self.run_id,
            err.get("node", ""),
            err.get("type", "Error"),
            err.get("message", ""),
            err.get("traceback", ""),
        )
