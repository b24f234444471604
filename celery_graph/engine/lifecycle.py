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
"""

from __future__ import annotations

import logging
from typing import Any

from ..codec import error_record
from ..dispatch import continue_canvas, publish_nodes
from ..model import GraphSpec
from ..protocol import NodeTaskId
from ..signals import run_finished, run_started
from ..state import Arrival, Continuation, Finish, Revoked, State

logger = logging.getLogger("celery_graph")

CONTINUATION_HOLD = 60.0  # seconds a process holds the claim on a canvas continuation


def settle(
    app: Any, state: State, spec: GraphSpec, run_id: str, arrival: Arrival, epoch: int = 0
) -> None:
    """After an arrival: pass skips on (a skipped node arrives as a skip at its own
    successors, which may in turn be skipped or released), publish the successors it
    released (complete.lua marked and leased them already; ``epoch``: the run's, in their
    task ids), and run the end-of-run hooks when it ended the run."""
    ended = arrival.ended
    claimed = list(arrival.publish)
    to_skip = list(arrival.skipped)
    while to_skip:
        skipped = spec.nodes[to_skip.pop()]
        more = state.scripts.complete(spec, run_id, skipped, "", kind="skipped")
        ended = ended or more.ended
        claimed += more.publish
        to_skip += more.skipped
    if claimed:
        publish_nodes(app, spec, run_id, claimed, epoch=epoch)
    if ended:
        run_finished.send(sender=app, app=app, run_id=run_id, state=state)
        after_run(app, state, run_id)


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
        run_finished.send(sender=app, app=app, run_id=run_id, state=state)
        after_run(app, state, run_id)
    return ended


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
        run_finished.send(sender=app, app=app, run_id=parsed.run_id, state=state)
        after_run(app, state, parsed.run_id)
    return reply


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
    run_started.send(sender=app, app=app, run_id=run_id, state=state)
    run_finished.send(sender=app, app=app, run_id=run_id, state=state)
    after_run(app, state, run_id)
    return True


def after_run(app: Any, state: State, run_id: str) -> bool:
    """Hooks for a run that ended: a Celery canvas waiting on it continues, once. True
    when nothing is left to do (no canvas, or it continued)."""
    try:
        state.runs.index_ended(run_id)
    except Exception:  # an index is a listing aid: the reconciler writes it again
        logger.warning("celery-graph: could not index the end of run %s", run_id, exc_info=True)
    try:
        claim = state.scripts.continuation(run_id, "claim", CONTINUATION_HOLD)
        if claim != Continuation.CLAIMED:
            return claim in (Continuation.NONE, Continuation.DONE)
        request = state.runs.continuation(run_id)
        outcome = state.runs.outcome(run_id)
        if request is None or outcome is None:
            return False
        continue_canvas(app, request, outcome)
        state.scripts.continuation(run_id, "done")
        return True
    except Exception:
        logger.exception(
            "celery-graph: could not continue the canvas of run %s (the reconciler tries again)",
            run_id,
        )
        return False
