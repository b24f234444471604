"""What follows an arrival, and the end of a run, in one place.

A node's arrival (complete.lua) may release successors, skip some, or end the run;
:func:`settle` does what follows, for the worker that ran the node and for the reconciler
alike. A run ends in one of two ways: its last sink completes (complete.lua ends it as
succeeded, or as failed when a group policy breaks), or something ends it as failed or
cancelled (:func:`end_run`: a node failing, a deadline, a cancel, a lost node, a
submission the broker refused). A run that could not start at all (a ``run_graph``
message whose graph is gone for good) is recorded as failed by :func:`refuse_run`.
Either way :func:`after_run` follows: a Celery canvas the run sits in continues, once,
reading the run's outcome from state; if the process dies first, the reconciler does it.

A graph with steps that follow its end (compensations, ``on_failure``, ``on_exit``) ends
into "finishing" instead (lib/run.lua): :func:`conclude` publishes the first step, and
:func:`step_ended` the next ones, one at a time, until the last closes the run; then the
end-of-run hooks run. A lost step is sent again by the reconciler, like any node.

A run of a flow with a concurrency limit leaves its slot when it ends, and the runs
waiting for one start (:func:`release_slot`, :func:`start_admitted`, from
:func:`after_run`); if the process dies first, the reconciler does it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from ..codec import decode_value, encode_value, error_record
from ..dispatch import continue_canvas, publish_items, publish_nodes
from ..errors import MissingParameterError, RunNotFound, RunNotResumable
from ..keys import limit_slot
from ..model import FINAL_STATES, Child, GraphSpec, NodeSpec, Outcome, child_run_id
from ..model.resume import resume_frontier
from ..protocol import NodeMessage, NodeTaskId
from ..signals import run_finished, run_started
from ..state import (
    After,
    Arrival,
    ChildMark,
    Continuation,
    Ended,
    Finish,
    Revoked,
    Slot,
    State,
    StepEnd,
    Stored,
)
from .results import store_failed_record, store_revoked

logger = logging.getLogger("celery_graph")

CONTINUATION_HOLD = 60.0  # seconds a process holds the claim on a canvas continuation


def settle(
    app: Any,
    state: State,
    spec: GraphSpec,
    run_id: str,
    arrival: Arrival,
    epoch: int = 0,
    *,
    keep: Callable[[NodeSpec], bool] | None = None,
) -> str | None:
    """After an arrival: pass skips on (a skipped node arrives as a skip at its own
    successors, which may in turn be skipped or released), publish the successors it
    released (complete.lua marked and leased them already; ``epoch``: the run's, in their
    task ids), and run the end-of-run hooks when it ended the run.

    When exactly one successor is released and ``keep(node)`` says so, it is not
    published: its id is returned, for the caller to run it (it is leased like a
    published node, so the reconciler sends it if the caller never does)."""
    ended, record = arrival.ended, arrival.record
    claimed = list(arrival.publish)
    to_skip = list(arrival.skipped)
    while to_skip:
        skipped = spec.nodes[to_skip.pop()]
        more = state.scripts.complete(spec, run_id, skipped, "", kind="skipped")
        ended, record = ended or more.ended, record or more.record
        claimed += more.publish
        to_skip += more.skipped
    kept = None
    if keep is not None and len(claimed) == 1 and not ended and keep(spec.nodes[claimed[0]]):
        kept = claimed.pop()
    if claimed:
        publish_nodes(app, spec, run_id, claimed, epoch=epoch)
    if ended:
        conclude(app, state, run_id, spec, record)
    return kept


def conclude(
    app: Any,
    state: State,
    run_id: str,
    spec: GraphSpec | None = None,
    record: dict[str, str] | None = None,
) -> None:
    """The run's graph ended: publish its first step when it is finishing (a handler or
    a compensation follows), else run the end-of-run hooks. ``record``: the run record
    as the call that ended the run answered it (complete.lua), else read here."""
    record = record or state.runs.record(run_id)
    if record.get("status") == "finishing":
        state.runs.track(run_id)  # a run that only waited is looked at rarely: due at once
        steps = json.loads(record["steps"])
        spec = spec or state.graphs.load(record["graph"])
        epoch = int(record.get("epoch") or 0)
        publish_nodes(app, spec, run_id, [steps[int(record["step"]) - 1]], epoch=epoch)
        return
    # the record just read, passed on: the receivers and the hooks read it once, not again
    run_finished.send(sender=app, app=app, run_id=run_id, state=state, record=record)
    after_run(app, state, run_id, record)


def step_ended(
    app: Any,
    state: State,
    spec: GraphSpec,
    run_id: str,
    step: str,
    how: StepEnd,
    payload: str,
    epoch: int = 0,
) -> After:
    """Step ``step`` of a finishing run ended ``how`` (``payload``: its result, or its
    error record): publish the next step (``epoch``: the run's), or, after the last, run
    the end-of-run hooks."""
    after, following = state.scripts.after(run_id, step, how, payload)
    if after != After.STALE:
        role = spec.nodes[step].after or "step"
        state.workers.count_semantics(f"step|{role}|{how}", state.settings.run_ttl)
    if after == After.NEXT:
        publish_nodes(app, spec, run_id, [following], epoch=epoch)
    elif after == After.CLOSED:
        run_finished.send(sender=app, app=app, run_id=run_id, state=state)
        after_run(app, state, run_id)
    elif how == StepEnd.FAILED:
        logger.info("celery-graph: run %s: a late failure of step %s ignored", run_id, step)
    return after


def end_run(
    app: Any,
    state: State,
    run_id: str,
    status: str,
    *,
    node_id: str = "",
    error: str = "",
    guard: str = "",
    unsent: bool = False,
) -> bool:
    """End a running run as ``status`` ("failed" or "cancelled") with ``error`` (an error
    record), then run the end-of-run hooks. True if this call ended it. ``guard`` is the
    result field of a failing message: when a result is stored there, the failure is a
    failing copy of a message that succeeded, and changes nothing."""
    finished = state.scripts.finish(run_id, status, node_id, error, guard=guard, unsent=unsent)
    ended = finished == Finish.ENDED
    if ended:
        conclude(app, state, run_id)
    return ended


def node_failed(
    app: Any,
    state: State,
    spec: GraphSpec,
    run_id: str,
    node: NodeSpec,
    error: str,
    traceback: str = "",
    epoch: int = 0,
) -> bool:
    """Node ``node`` failed for good (``error``: its error record): the run fails, unless
    the node is a member of a group whose policy tolerates it; then it arrives at its
    successors as failed, and complete.lua decides the policy. A failure of a node whose
    result is stored changes nothing. True if this ended the run."""
    if node.tolerant is None:
        return end_run(app, state, run_id, "failed", node_id=node.id, error=error, guard=node.id)
    arrival = state.scripts.complete(
        spec,
        run_id,
        node,
        "",
        kind="failed",
        error_json=error,
        traceback=f"last failure, in node {node.id!r}:\n{traceback}",
    )
    if arrival.ended == Ended.FAILED:  # the group's policy broke: complete.lua failed the run
        conclude(app, state, run_id, spec, arrival.record)
        return True
    settle(app, state, spec, run_id, arrival, epoch)
    return bool(arrival.ended)


def revoked(
    app: Any, state: State, task_id: str, *, terminated: bool = False, signal: str = ""
) -> Revoked | None:
    """A node message was revoked through Celery (``terminated``: its pool process was
    killed with ``signal``): cancel its run at once, naming the node and "revoked", then
    run the end-of-run hooks. None for a task id that is not a node message's; else what
    revoke.lua answered (a stale revoke, of a run resumed since, changes nothing)."""
    parsed = NodeTaskId.parse(task_id)
    if parsed is None:
        return None
    node = parsed.node_id
    how = f", terminated with {signal or 'a signal'}" if terminated else ""
    error = error_record(
        node,
        "TaskRevokedError",
        "celery.exceptions",
        f"node {node!r} revoked (task {task_id}{how}); the run is cancelled. "
        f"`celery-graph resume {parsed.run_id}` runs what is left",
    )
    reply = state.scripts.revoke(parsed.run_id, parsed.field, node, parsed.epoch, error)
    if reply == Revoked.ENDED:
        logger.warning("celery-graph: run %s cancelled: node %r revoked", parsed.run_id, node)
        conclude(app, state, parsed.run_id)  # its handlers first, if it has any
    return reply


def message_revoked(
    app: Any,
    state: State,
    task_id: str,
    *,
    terminated: bool = False,
    signum: Any = None,
    request: Any = None,
) -> Revoked | None:
    """Celery discarded the node message ``task_id`` for a revoke, or it was killed
    (``terminated``) with signal ``signum``: cancel its run (:func:`revoked`, whose answer
    this is) and mark the task id REVOKED in the result backend. Celery's
    ``task_revoked`` (executor/task.py) and a terminate seen by the worker
    (worker/revokes.py) end here."""
    signal = f"signal {signum}" if terminated and signum else ""
    outcome = revoked(app, state, task_id, terminated=terminated, signal=signal)
    store_revoked(app, task_id, "terminated" if terminated else "revoked", request)
    return outcome


def refuse_run(
    app: Any,
    state: State,
    run_id: str,
    *,
    graph_id: str,
    inputs_json: str,
    error: str,
    extra: dict[str, str] | None = None,
) -> bool:
    """Record run ``run_id``, which could not start, as failed with ``error`` (an error
    record), then run the end-of-run hooks: listings, the run signals (metrics count it as
    a failed run) and the canvas it sits in. False when the run existed already (a
    redelivered message): nothing is recorded twice."""
    if not state.runs.refuse(run_id, graph_id, inputs_json, error, extra):
        return False
    flow = (extra or {}).get("flow", "")
    run_started.send(sender=app, app=app, run_id=run_id, state=state, flow=flow)
    run_finished.send(sender=app, app=app, run_id=run_id, state=state)
    after_run(app, state, run_id)
    return True


# -- child runs: child(flow) returned by a node -------------------------------------------

CHILD_OF = "child_of"  # the key of a child run's continuation that names its parent run


def start_child(app: Any, state: State, run_id: str, node_id: str, child: Child) -> str:
    """Node ``node_id`` of run ``run_id`` (or item "<node>#<i>" of a map) returned
    ``child``: start the child run (its id derived from the parent's and the node's, so a
    node delivered again finds it), then let the node wait for it without a worker. The
    child's end continues into the parent (its continuation, claimed once, retried by the
    reconciler): :func:`child_ended`."""
    child_id = child_run_id(run_id, node_id)
    spec = child.spec
    inputs_json = encode_value(child.inputs, lambda: f"node {node_id!r}: child() inputs")
    extra = {
        "parent": run_id,
        "parent_node": node_id,
        "continuation": json.dumps({CHILD_OF: run_id, "node": node_id}),
    }
    if child.flow_name:
        extra["flow"] = child.flow_name
    slot, value = slot_of(spec, child.inputs, child.flow_name)
    waits = False
    if slot is not None and not state.runs.started(child_id):
        # like any run of its flow: a slot, or a place in line (a delivery again of the
        # node asks again and gets the same answer: one member of the holders, never two)
        extra.update(limit_scope=slot.scope, limit_group=slot.group)
        waits = state.limits.enter(slot, child_id, value, state.settings.queued_lease) > 0
    created, _detail = state.runs.create(child_id, spec, inputs_json, extra=extra, waits=waits)
    if created:
        state.workers.count_semantics("children", state.settings.run_ttl)
        run_started.send(
            sender=app, app=app, run_id=child_id, state=state, flow=extra.get("flow", "")
        )
        if not waits:
            publish_nodes(app, spec, child_id, spec.roots)
        elif slot is not None and state.limits.holds(slot.scope, slot.group, child_id):
            # a slot that freed while the run was created went to it, unstarted
            start_admitted(app, state, slot.scope, slot.group, [child_id])
    mark = state.scripts.mark_child(run_id, node_id, child_id)
    if mark == ChildMark.WAITING and not created:
        # started by an earlier delivery, maybe ended already (a resumed parent)
        outcome = state.runs.outcome(child_id)
        if outcome is not None:
            child_ended(app, state, run_id, node_id, outcome)
    return child_id


def child_ended(app: Any, state: State, run_id: str, field: str, outcome: Outcome) -> None:
    """Child run ``outcome.run_id`` of ``field`` of run ``run_id`` (a node, or item i of a
    map, "<node>#<i>") ended: the node (the item) completes with the child's result, or
    fails with its error."""
    record = state.runs.record(run_id)
    spec = state.runs.graph_of(run_id, record)
    epoch = int(record.get("epoch") or 0)
    node_id, _, index = field.partition("#")
    node = spec.nodes[node_id]
    state.runs.track(run_id)  # a parent that only waits is looked at rarely: due at once
    if outcome.state == "succeeded":
        result_json = encode_value(outcome.value, lambda: f"child run {outcome.run_id}: result")
        if index:  # an item of a map: the last item to arrive completes the map node
            count = state.scripts.map_count(run_id, node_id)
            _stored, arrived, items = state.scripts.map_arrive(
                run_id, node, int(index), count, result_json
            )
            if arrived < count:
                return
            result_json = state.scripts.map_results(run_id, node_id, items).decode()
        arrival = state.scripts.complete(spec, run_id, node, result_json)
        settle(app, state, spec, run_id, arrival, epoch)
        return
    err = outcome.error or {}
    where = f" in node {err['node']!r}" if err.get("node") else ""
    why = (
        "was cancelled"
        if outcome.state == "cancelled"
        else f"failed{where}: {err.get('type', 'Error')}: {err.get('message', '')}"
    )
    failed = outcome.state == "failed"
    error = error_record(
        node_id,
        err.get("type", "Error") if failed else "RunCancelled",
        err.get("module", "") if failed else "celery_graph.errors",
        f"child run {outcome.run_id} {why}",
        err.get("traceback", ""),
    )
    store_failed_record(app, run_id, node_id, error, epoch)
    if index:  # an item's failure fails the run (as a failing item does)
        end_run(app, state, run_id, "failed", node_id=node_id, error=error, guard=field)
        return
    node_failed(app, state, spec, run_id, node, error, epoch=epoch)


def cancel_children(app: Any, state: State, run_id: str) -> list[str]:
    """Cancel the child runs of run ``run_id`` that still run (and theirs); their ids."""
    cancelled = []
    for child_id in state.runs.children(run_id).values():
        if end_run(app, state, child_id, "cancelled"):
            cancelled.append(child_id)
        cancelled += cancel_children(app, state, child_id)
    return cancelled


def after_run(app: Any, state: State, run_id: str, record: dict[str, str] | None = None) -> bool:
    """Hooks for a run that ended: a Celery canvas waiting on it continues, once. True
    when nothing is left to do (no canvas, or it continued). ``record``: the run record,
    read since it ended, when the caller has it."""
    try:
        state.runs.index_ended(run_id, record)
    except Exception:  # an index is a listing aid: the reconciler writes it again
        logger.warning("celery-graph: could not index the end of run %s", run_id, exc_info=True)
    try:
        release_slot(app, state, run_id, record)
    except Exception:  # the slot's lease runs out, and the reconciler frees it
        logger.warning(
            "celery-graph: could not free the concurrency slot of run %s (the reconciler frees it)",
            run_id,
            exc_info=True,
        )
    if record is not None and "continuation" not in record:
        return True  # no canvas waits on it (a run gets its continuation when created)
    try:
        claim = state.scripts.continuation(run_id, "claim", CONTINUATION_HOLD)
        if claim != Continuation.CLAIMED:
            return claim in (Continuation.NONE, Continuation.DONE)
        request = state.runs.continuation(run_id)
        outcome = state.runs.outcome(run_id)
        if request is None or outcome is None:
            return False
        if CHILD_OF in request:  # a child run: its end completes its parent's node
            child_ended(app, state, request[CHILD_OF], request["node"], outcome)
        else:
            continue_canvas(app, request, outcome)
        state.scripts.continuation(run_id, "done")
        return True
    except Exception:
        logger.exception(
            "celery-graph: could not continue the canvas of run %s (the reconciler tries again)",
            run_id,
        )
        return False


def slot_of(spec: GraphSpec, inputs: dict[str, Any], flow: str | None) -> tuple[Slot | None, Any]:
    """The slot group a run of ``spec`` asks for, and its key input's value (None, None for a
    flow without a concurrency limit). The limit's scope is the flow name, or the graph id
    of a flow without one."""
    limit = spec.concurrency
    if limit is None:
        return None, None
    value = None
    if limit.key is not None:
        if limit.key not in inputs:
            raise MissingParameterError(
                f"the flow's concurrency limit is per run input {limit.key!r}, and this run "
                f"has no input {limit.key!r}: pass it (flow.apply_async({limit.key}=...))"
            )
        value = inputs[limit.key]
    return Slot(flow or spec.graph_id, limit_slot(value), limit.limit), value


def release_slot(
    app: Any, state: State, run_id: str, record: dict[str, str] | None = None
) -> list[str]:
    """Run ``run_id`` ended: it leaves the slot (or the queue) of its flow's concurrency
    limit, and the oldest runs waiting in its group start. The runs started."""
    slot = state.runs.slot_of(run_id, record)
    if slot is None:
        return []
    scope, group = slot
    admitted = state.limits.leave(scope, group, run_id, state.settings.queued_lease)
    return start_admitted(app, state, scope, group, admitted)


def start_admitted(app: Any, state: State, scope: str, group: str, run_ids: list[str]) -> list[str]:
    """Start runs that took a slot of concurrency limit ``scope``, group ``group``: each
    one still queued goes running (admit.lua, once) and its roots are published. A run
    that ended meanwhile (cancelled, past its deadline) gives its slot to the next one. A
    run not created yet is left holding its slot: its submitter starts it, or the
    reconciler frees the slot when its lease runs out. The runs started."""
    started: list[str] = []
    pending = list(run_ids)
    while pending:
        run_id = pending.pop(0)
        try:
            record = state.runs.record(run_id)
        except RunNotFound:
            continue
        status = record.get("status")
        if status in FINAL_STATES:
            pending += state.limits.leave(scope, group, run_id, state.settings.queued_lease)
            continue
        if status != "queued":
            continue
        spec = state.runs.graph_of(run_id, record)
        if record.get("resuming"):  # resumed while every slot was taken (park.lua)
            try:
                reopen_run(app, state, spec, run_id)
            except RunNotResumable:  # another process reopened it first
                continue
            started.append(run_id)
            continue
        admitted, _ = state.scripts.admit(run_id, spec)
        if admitted:
            state.runs.track(run_id)  # the reconciler publishes the roots if this dies now
            publish_nodes(app, spec, run_id, spec.roots)
            started.append(run_id)
    return started


def reopen_run(app: Any, state: State, spec: GraphSpec, run_id: str) -> None:
    """Reopen a failed or cancelled run (or one queued for a concurrency slot to resume,
    once it holds one): the nodes it had not finished are sent again, in a new epoch
    (resume.lua); results already stored are kept. Raises RunNotResumable when the run
    is neither (another process reopened it first)."""
    fields = state.runs.node_fields(run_id)
    results = state.runs.results(run_id)
    leases = state.runs.leases(run_id)
    now = state.runs.time()
    arrived = {m: state.runs.map_arrivals(run_id, m) for m in spec.maps if f"{m}:items" in fields}
    frontier, items, skips, watch = resume_frontier(
        spec, fields, set(results), leases, now, arrived
    )
    state.runs.track(run_id)  # the reconciler looks after it again
    watched = {_field(spec, n, u): (n, u) for n, u in watch}
    epoch, late = state.scripts.resume(
        run_id, frontier + [spec.nodes[n].unit_field(u) for n, u in items], list(watched)
    )
    # running when read, ended into the closed run before it reopened: sent as well
    for node_id, unit in (watched[f] for f in late):
        if unit is None:
            frontier.append(node_id)
        else:
            items.append((node_id, unit))
    # again once reopened: a sweep between the first listing and the reopening saw the
    # run still ended and unlisted it (tests/test_durable.py)
    state.runs.track(run_id)
    state.runs.index_resumed(run_id)
    # a publish that fails here is recovered by the reconciler: the nodes are leased
    publish_nodes(app, spec, run_id, frontier, epoch=epoch)
    if skips:  # skips the run ended before passing on (their leases cover a failure)
        arrival = Arrival(Stored.KEPT, Ended.NO, [], skips)
        settle(app, state, spec, run_id, arrival, epoch)
    by_map: dict[str, list[int]] = {}
    for node_id, index in items:
        by_map.setdefault(node_id, []).append(index)
    for node_id, indexes in by_map.items():
        node = spec.nodes[node_id]
        assert node.map_source is not None
        source = decode_value(results[node.map_source])
        publish_items(
            app,
            node,
            NodeMessage(spec.graph_id, run_id, node_id, node.call, epoch=epoch),
            source,
            indexes,
        )


def _field(spec: GraphSpec, node_id: str, unit: int | None) -> str:
    return node_id if unit is None else spec.nodes[node_id].unit_field(unit)
