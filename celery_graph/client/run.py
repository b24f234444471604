"""GraphRun: a handle on one run, from the process that started it or any other."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from celery import current_app

from ..codec import decode_value, encode_value, error_record, parse_error
from ..dispatch import publish_nodes, revoke
from ..engine.context import RunContext
from ..engine.lifecycle import cancel_children, end_run, reopen_run, start_admitted
from ..errors import (
    ResultTooLarge,
    RunNotFound,
    RunNotResumable,
    RunStateLost,
    RunTimeout,
    SignalRefused,
    StoreUnavailable,
)
from ..model import FINAL_STATES, GraphSpec, RunStatus
from ..protocol import task_id_for
from ..state import WAIT_SLICE, Signal, Slot, State, state_for

R = TypeVar("R", covariant=True)


class GraphRun(Generic[R]):
    """A run of a graph. Reopen one from any process with ``GraphRun(run_id, app=app)``.
    ``R`` is what :meth:`get` returns: a typed flow's ``apply_async`` gives
    ``GraphRun[its result]``; a run reopened by id is ``GraphRun[Any]``."""

    def __init__(
        self: GraphRun[Any],
        run_id: str,
        app: Any = None,
        spec: GraphSpec | None = None,
        created: float | None = None,
    ) -> None:
        self.id = run_id
        self.app = app
        self._spec = spec
        # when the run was created (server time), once known: its state cannot have
        # expired before min(graph_result_ttl, graph_run_ttl) after that
        self._created = created
        # created by this handle's submission, with no deadline: get() may wait first
        self._wait_first = False

    def __repr__(self) -> str:
        return f"<GraphRun {self.id}>"

    @property
    def _app(self) -> Any:
        return self.app or current_app._get_current_object()

    @property
    def _state(self) -> State:
        return state_for(self._app)

    def _record(self, state: State) -> dict[str, str]:
        """The run record; RunStateLost when it is gone before it could have expired."""
        return self._record_with_results(state, ())[0]

    def _record_with_results(
        self, state: State, fields: Sequence[str]
    ) -> tuple[dict[str, str], list[bytes | None]]:
        """The run record and the results of ``fields``, in one round trip."""
        try:
            record, results = state.runs.record_with_results(self.id, fields)
        except RunNotFound as exc:
            raise self._lost_or(exc, state) from None
        if self._created is None:
            with contextlib.suppress(KeyError, ValueError):
                self._created = float(record["created"])
        return record, results

    def _lost_or(self, exc: RunNotFound, state: State) -> RunNotFound:
        """``exc``, or RunStateLost when this handle knows the run cannot have expired: its
        keys live at least min(graph_result_ttl, graph_run_ttl) from its creation."""
        if self._created is None:
            return exc
        settings = state.settings
        kept = min(settings.result_ttl, settings.run_ttl)
        age = state.runs.time() - self._created
        if age >= kept:
            return exc
        return RunStateLost(
            f"run {self.id}: its state is gone from the graph Redis (key prefix "
            f"{state.keys.prefix!r}) {age:.0f} s after it was created, before it could have "
            f"expired (kept at least {kept} s): the graph Redis lost its data (a restart "
            "without persistence, a failover to a replica that lagged). Nothing more runs "
            "for it; submit it again (the same idempotency key starts it afresh)"
        )

    def spec(self) -> GraphSpec:
        """The run's graph (a graph of no nodes for a run that never started)."""
        if self._spec is None:
            state = self._state
            self._spec = state.runs.graph_of(self.id, self._record(state))
        return self._spec

    def status(self) -> RunStatus:
        """The run's state and each node's state, attempts and worker."""
        state = self._state
        try:
            return state.runs.status(self.id, self.spec())
        except RunNotFound as exc:
            raise self._lost_or(exc, state) from None

    def summary(self) -> RunStatus:
        """The run's state and how many of its nodes are in each state, read from counts
        the graph state keeps as nodes change: a few keys, whatever the size of the run
        (``status()`` reads every node). ``summary().counts()`` equals
        ``status().counts()``; its ``nodes`` is empty and ``total`` is the graph's size.
        (A run started by a version that kept no counts is read whole: ``status()``.)

        >>> run.summary().counts()  # doctest: +SKIP
        {'pending': 99000, 'queued': 40, 'running': 8, 'succeeded': 952}
        """
        state = self._state
        try:
            return state.runs.summary(self.id)
        except RunNotFound as exc:
            raise self._lost_or(exc, state) from None

    @property
    def flow_name(self) -> str | None:
        """The flow name the run records (``flow.with_name()``, a workflow's name, or
        ``apply_async(flow_name=...)``), or None."""
        return self._state.runs.record(self.id).get("flow") or None

    def results(self) -> dict[str, Any]:
        """{node id: result} for every node that finished."""
        raw = self._state.runs.results(self.id)
        # "<node>#<i>" fields hold elements of a dynamic fan-out, not nodes
        return {k: decode_value(v) for k, v in raw.items() if "#" not in k}

    def ready(self) -> bool:
        return self._record(self._state)["status"] in FINAL_STATES

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds on the run's completion signal (no polling);
        True if the run has ended. For progress displays between status reads."""
        state = self._state
        end = time.monotonic() + timeout
        while not self.ready():
            left = end - time.monotonic()
            if left <= 0:
                return False
            state.runs.wait(self.id, max(left, 0.01))
        return True

    def get(self, timeout: float | None = None) -> R:
        """Block until the run ends. Returns the single sink's result, or {sink: result}
        when there are several; raises RunFailed, RunCancelled or RunTimeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self._wait_once(deadline, timeout)
            except StoreUnavailable:
                # Redis restarting: keep waiting until our own deadline, never past it
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def _wait_once(self, deadline: float | None, timeout: float | None) -> Any:
        state = self._state
        # the sinks' results are read with the record when the handle knows its graph:
        # the record that says the run ended comes with its outcome (one round trip)
        sinks = list(self._spec.sinks) if self._spec is not None else []
        signalled = None  # the outcome a completion signal carried (small results)
        if self._wait_first:  # just submitted: nothing to read before its signal comes
            self._wait_first = False
            first = WAIT_SLICE if deadline is None else deadline - time.monotonic()
            signalled = state.runs.wait(self.id, max(min(first, WAIT_SLICE), 0.01))
        while True:
            if signalled is not None:  # the run succeeded: nothing to read
                return signalled.value
            record, results = self._record_with_results(state, sinks)
            # a run stuck past its deadline (no worker to notice) is failed here; the
            # deadline is on the Redis server's clock, like every time in the state
            left = None
            if record["status"] == "running" and record.get("deadline"):
                left = float(record["deadline"]) - state.runs.time()
                if left < 0 and self._fail_deadline():
                    record, results = self._record_with_results(state, sinks)
            outcome = state.runs.outcome(self.id, record, (sinks, results) if sinks else None)
            if outcome is not None:
                if outcome.state == "succeeded":
                    return outcome.value
                raise outcome.exception()
            remaining = WAIT_SLICE
            if left is not None:
                remaining = min(remaining, max(left, 0) + 0.05)
            if deadline is not None:
                remaining = min(remaining, deadline - time.monotonic())
                if remaining <= 0:
                    raise RunTimeout(f"run {self.id} still {record['status']} after {timeout} s")
            signalled = state.runs.wait(self.id, max(remaining, 0.01))

    def _fail_deadline(self) -> bool:
        error = error_record(
            "", "DeadlineExceeded", "celery_graph.errors", f"run {self.id} passed its deadline"
        )
        return end_run(self._app, self._state, self.id, "failed", error=error)

    def context(self) -> RunContext:
        """The run's shared state (what ``inject_context`` tasks wrote)."""
        return RunContext(self._state, self.id)

    def resume(self) -> GraphRun:
        """Send again the nodes a failed or cancelled run had not finished; results already
        stored are kept, and so are nodes a branch skipped or a group policy tolerated
        failing. A node still running (its lease alive) is left to finish. Raises
        RunNotResumable for a run that is not failed or cancelled.

        A run of a flow with a concurrency limit takes a slot again like any run of the
        flow: with every slot taken it waits in state ``queued`` (its place in line in
        ``status()``), and the nodes are sent again when a slot frees for it."""
        state, spec = self._state, self.spec()
        record = state.runs.record(self.id)
        if record.get("unstarted"):
            raise RunNotResumable(
                f"run {self.id} never started ({_reason(record)}): there is nothing to "
                "resume; start the flow again"
            )
        slot = state.runs.slot_of(self.id)
        limit = spec.concurrency
        if slot and limit:
            status = record.get("status")
            if status not in ("failed", "cancelled") and not record.get("resuming"):
                raise RunNotResumable(
                    f"run {self.id} cannot be resumed: not resumable: run is {status}"
                )
            value = json.loads(record.get("inputs") or "{}").get(limit.key) if limit.key else None
            if not self._wait_for_slot(Slot(*slot, limit.limit), value):
                return self  # queued: a slot that frees resumes it
        reopen_run(self._app, state, spec, self.id)
        return self

    def _wait_for_slot(self, slot: Slot, value: Any) -> bool:
        """A resumed run of a flow with a concurrency limit takes a slot like any run of
        the flow (True: it holds one, maybe still from before: one member of the holders,
        never counted twice), or waits queued for one (False), to be reopened by whoever
        frees a slot. The slot is asked for first: a crash before the run is queued leaves
        a slot the reconciler frees, never a queued run nobody starts."""
        state = self._state
        lease = state.settings.queued_lease
        while state.limits.enter(slot, self.id, value, lease):
            state.scripts.park(self.id)
            state.runs.index_resumed(self.id)
            if state.limits.holds(slot.scope, slot.group, self.id):  # a slot freed meanwhile
                start_admitted(self._app, state, slot.scope, slot.group, [self.id])
                return False
            if state.limits.position(slot.scope, slot.group, self.id) is not None:
                return False  # in line
            # a slot came and went while it was not queued yet (given back as ended): again
        return True

    def signal(self, name: str, payload: Any = None) -> bool:
        """Signal the run's ``wait_for(name)`` node with ``payload`` (JSON data), which
        becomes the node's result. True when the node was waiting and goes on now; False
        when the run has not reached it yet: the signal is kept and consumed when it does.
        Raises SignalRefused when the run has no such wait, has ended, or the wait had its
        signal already (one signal per wait)."""
        state, spec = self._state, self.spec()
        node = spec.nodes.get(name)
        if node is None or not node.waits:
            waits = ", ".join(repr(w) for w in spec.waits) or "none"
            raise SignalRefused(
                f"run {self.id} has no wait {name!r} to signal (its waits: {waits})"
            )
        payload_json = encode_value(payload, lambda: f"the payload of signal {name!r}")
        limit = state.settings.max_result_bytes
        if len(payload_json) > limit:
            raise ResultTooLarge(
                f"the payload of signal {name!r} is {len(payload_json)} bytes encoded, over "
                f"graph_max_result_bytes={limit}"
            )
        state.runs.track(self.id)  # a waiting run is looked at rarely: due again at once
        answer, status = state.scripts.signal(self.id, name, payload_json)
        if answer == Signal.GONE:
            raise SignalRefused(
                f"run {self.id} is gone (expired, or never started): wait {name!r} "
                "cannot be signalled"
            )
        if answer == Signal.ENDED:
            raise SignalRefused(
                f"run {self.id} has ended ({status}): wait {name!r} cannot be signalled"
            )
        if answer == Signal.TAKEN:
            raise SignalRefused(
                f"wait {name!r} of run {self.id} has had its signal already (one per wait)"
            )
        state.workers.count_semantics("signals", state.settings.run_ttl)
        if answer == Signal.WOKEN:
            # leased by signal.lua: a publish lost here is sent again by the reconciler
            epoch = int(state.runs.record(self.id).get("epoch") or 0)
            publish_nodes(self._app, spec, self.id, [name], epoch=epoch)
            return True
        return False

    def cancel(self, terminate: bool = False, signal: str = "SIGTERM") -> bool:
        """Stop the run: no pending node starts after this, and its child runs are
        cancelled too. True if this call ended it.

        ``terminate=True`` also stops the nodes running now, through Celery's own
        ``revoke(terminate=True)``: the pool process running each gets ``signal``
        (prefork pool; other pools cannot kill one task). Without it they finish, and
        their results are kept for a resume."""
        ended = end_run(self._app, self._state, self.id, "cancelled")
        if terminate:
            revoke(self._app, self.running_task_ids(), terminate=True, signal=signal)
        cancel_children(self._app, self._state, self.id)
        return ended

    def running_task_ids(self) -> list[str]:
        """The task ids of the node messages running now (every epoch's: a message sent
        before a resume may still run)."""
        state = self._state
        epoch = int(self._record(state).get("epoch") or 0)
        fields = state.runs.node_fields(self.id)
        running = [
            f.removesuffix(":state")
            for f, v in fields.items()
            if f.endswith(":state") and v == "running"
        ]
        return [task_id_for(self.id, f, e) for f in sorted(running) for e in range(epoch + 1)]


def _reason(record: dict[str, str]) -> str:
    error = parse_error(record.get("error")) or {}
    return f"{error.get('type', 'Error')}: {error.get('message', '')}"
