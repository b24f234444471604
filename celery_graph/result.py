"""GraphRun: a handle on one run, from the process that started it or any other."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from .errors import RunCancelled, RunFailed, RunTimeout, StoreUnavailable
from .runtime import decode_value, engine_for
from .spec import GraphSpec
from .store import translate_errors

FINAL_STATES = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class NodeStatus:
    state: str  # pending, queued, running, succeeded, failed
    attempts: int = 0
    worker: str | None = None
    started: float | None = None
    finished: float | None = None
    error: dict[str, Any] | None = None  # a member that failed under its group's policy


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


class GraphRun:
    """A run of a graph. Reopen one from any process with ``GraphRun(run_id, app=app)``."""

    def __init__(self, run_id: str, app: Any = None, spec: GraphSpec | None = None) -> None:
        self.id = run_id
        self.app = app
        self._spec = spec

    def __repr__(self) -> str:
        return f"<GraphRun {self.id}>"

    @property
    def _engine(self):
        return engine_for(self.app)

    def spec(self) -> GraphSpec:
        if self._spec is None:
            record = self._engine.runs.record(self.id)
            self._spec = self._engine.store.load(record["graph"])
        return self._spec

    def status(self) -> RunStatus:
        """The run's state and each node's state, attempts and worker."""
        engine = self._engine
        record = engine.runs.record(self.id)
        spec = self.spec()
        fields = engine.runs.node_fields(self.id)
        nodes = {}
        for nid in spec.order:
            state = fields.get(f"{nid}:state")
            if state is None:
                state = "queued" if f"{nid}:dispatch" in fields else "pending"
            started = fields.get(f"{nid}:started")
            finished = fields.get(f"{nid}:finished")
            nodes[nid] = NodeStatus(
                state=state,
                attempts=int(fields.get(f"{nid}:attempts", 0)),
                worker=fields.get(f"{nid}:worker"),
                started=float(started) if started else None,
                finished=float(finished) if finished else None,
                error=json.loads(fields[f"{nid}:error"]) if f"{nid}:error" in fields else None,
            )
        return RunStatus(
            run_id=self.id,
            state=record["status"],
            graph_id=record["graph"],
            created=float(record["created"]),
            finished=float(record["finished"]) if record.get("finished") else None,
            nodes=nodes,
            error=json.loads(record["error"]) if record.get("error") else None,
        )

    def results(self) -> dict[str, Any]:
        """{node id: result} for every node that finished."""
        raw = self._engine.runs.results(self.id)
        # "<node>#<i>" fields hold elements of a dynamic fan-out, not nodes
        return {k: decode_value(v) for k, v in raw.items() if "#" not in k}

    def ready(self) -> bool:
        return self._engine.runs.record(self.id)["status"] in FINAL_STATES

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds on the run's completion signal (no polling);
        True if the run has ended. For progress displays between status reads."""
        engine = self._engine
        if self.ready():
            return True
        self._wait_slice(engine, engine.keys.done(self.id), max(timeout, 0.01))
        return self.ready()

    def get(self, timeout: float | None = None) -> Any:
        """Block until the run ends. Returns the single sink's result, or {sink: result}
        when there are several; raises RunFailed, RunCancelled or RunTimeout."""
        engine = self._engine
        deadline = None if timeout is None else time.monotonic() + timeout
        done_key = engine.keys.done(self.id)
        while True:
            try:
                return self._wait_once(engine, done_key, deadline, timeout)
            except StoreUnavailable:
                # Redis restarting: keep waiting until our own deadline, never past it
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def _wait_once(self, engine: Any, done_key: str, deadline: float | None, timeout) -> Any:
        while True:
            record = engine.runs.record(self.id)
            # a run stuck past its deadline (no node left to notice) is failed here
            if (
                record["status"] == "running"
                and record.get("deadline")
                and time.time() > float(record["deadline"])
                and self._fail_deadline()
            ):
                record = engine.runs.record(self.id)
            if record["status"] in FINAL_STATES:
                return self._outcome(record)
            remaining = engine.WAIT_SLICE
            if record.get("deadline"):
                remaining = min(remaining, max(float(record["deadline"]) - time.time(), 0) + 0.05)
            if deadline is not None:
                remaining = min(remaining, deadline - time.monotonic())
                if remaining <= 0:
                    raise RunTimeout(
                        f"run {self.id} still {record['status']} after {timeout} s"
                    )
            self._wait_slice(engine, done_key, max(remaining, 0.01))

    def _fail_deadline(self) -> bool:
        error = json.dumps(
            {"node": "", "type": "DeadlineExceeded", "module": "celery_graph.errors",
             "message": f"run {self.id} passed its deadline", "traceback": ""}
        )
        ended = self._engine.barrier.finish(self.spec(), self.id, "failed", "", error)
        if ended:
            from .runtime import run_ended

            run_ended(self.app or self._engine.app, self.id)
        return ended

    @staticmethod
    def _wait_slice(engine: Any, done_key: str, seconds: float) -> None:
        # BLMOVE from the list to itself rotates the signal, so every waiter sees it.
        def wait() -> None:
            engine.wait_client.blmove(done_key, done_key, seconds, "LEFT", "RIGHT")

        translate_errors("waiting for a run", wait)

    def _outcome(self, record: dict[str, str]) -> Any:
        state = record["status"]
        if state == "cancelled":
            raise RunCancelled(self.id)
        if state == "failed":
            err = json.loads(record.get("error") or "{}")
            raise RunFailed(
                self.id,
                err.get("node", ""),
                err.get("type", "Error"),
                err.get("message", ""),
                err.get("traceback", ""),
            )
        sinks = json.loads(record["sinks"])
        raws = translate_errors(
            "reading results",
            lambda: self._engine.client.hmget(self._engine.keys.results(self.id), sinks),
        )
        values = {s: decode_value(r) if r is not None else None for s, r in zip(sinks, raws)}
        return values[sinks[0]] if len(sinks) == 1 else values

    def context(self) -> Any:
        """The run's shared state (what ``inject_context`` tasks wrote)."""
        from .context import RunContext

        return RunContext(self._engine, self.id)

    def resume(self) -> GraphRun:
        """Re-dispatch the failed and unfinished nodes of a failed or cancelled run;
        results already stored are kept. Raises RunNotResumable otherwise."""
        from .submit import resume

        return resume(self)

    def cancel(self) -> bool:
        """Stop the run: no pending node starts after this. True if this call ended it."""
        ended = self._engine.barrier.finish(self.spec(), self.id, "cancelled")
        if ended:
            from .runtime import run_ended

            run_ended(self.app or self._engine.app, self.id)
        return ended
