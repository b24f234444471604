"""What a run looks like from outside: its state, each node's state, and its outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..codec import parse_error
from ..errors import CeleryGraphError, RunCancelled, RunFailed

FINAL_STATES = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class NodeStatus:
    state: str  # pending, queued, running, succeeded, failed, skipped
    attempts: int = 0
    worker: str | None = None
    started: float | None = None
    finished: float | None = None
    error: dict[str, Any] | None = None  # a member that failed under its group's policy

    @classmethod
    def from_fields(cls, node_id: str, fields: dict[str, str]) -> NodeStatus:
        """One node's status from the run's node-state hash ("<node>:<field>" -> value)."""
        state = fields.get(f"{node_id}:state")
        if state is None:
            state = "queued" if f"{node_id}:dispatch" in fields else "pending"
        started = fields.get(f"{node_id}:started")
        finished = fields.get(f"{node_id}:finished")
        return cls(
            state=state,
            attempts=int(fields.get(f"{node_id}:attempts", 0)),
            worker=fields.get(f"{node_id}:worker"),
            started=float(started) if started else None,
            finished=float(finished) if finished else None,
            error=parse_error(fields.get(f"{node_id}:error")),
        )


@dataclass(frozen=True)
class RunStatus:
    run_id: str
    state: str  # running, succeeded, failed, cancelled
    graph_id: str
    created: float
    finished: float | None
    nodes: dict[str, NodeStatus] = field(default_factory=dict)
    error: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.nodes.values():
            out[n.state] = out.get(n.state, 0) + 1
        return out

    @classmethod
    def from_state(
        cls, run_id: str, record: dict[str, str], fields: dict[str, str], order: tuple[str, ...]
    ) -> RunStatus:
        """From the run record, the node-state hash and the graph's node order."""
        return cls(
            run_id=run_id,
            state=record["status"],
            graph_id=record["graph"],
            created=float(record["created"]),
            finished=float(record["finished"]) if record.get("finished") else None,
            nodes={nid: NodeStatus.from_fields(nid, fields) for nid in order},
            error=parse_error(record.get("error")),
        )


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
            return RunCancelled(self.run_id)
        err = self.error or {}
        return RunFailed(
            self.run_id,
            err.get("node", ""),
            err.get("type", "Error"),
            err.get("message", ""),
            err.get("traceback", ""),
        )
