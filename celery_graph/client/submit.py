"""Starting runs: validation, idempotency keys, backpressure, deadlines."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import uuid
from collections.abc import Callable
from typing import Any

from celery import current_app
from kombu.utils import json as kjson

from ..codec import encode_value, error_record
from ..dispatch import publish_nodes, wait_for_room
from ..engine.lifecycle import end_run, slot_of, start_admitted
from ..errors import InputTooLarge, PublishError, RunNotFound, StoreError
from ..model import GraphSpec
from ..signals import run_started
from ..state import Slot, State, state_for
from .run import GraphRun

logger = logging.getLogger("celery_graph")


def run_id_for(idempotency_key: str | None) -> str:
    """A fresh run id, or the one an idempotency key always maps to: the key and its run
    are one record, so a retry finds the run (or starts it) and both expire together."""
    if idempotency_key is None:
        return uuid.uuid4().hex
    return hashlib.sha256(f"idempotency:{idempotency_key}".encode()).hexdigest()[:32]


def submit_spec(
    spec: GraphSpec,
    inputs: dict[str, Any],
    app: Any = None,
    *,
    idempotency_key: str | None = None,
    deadline: float | None = None,
    extra_fields: dict[str, str] | None = None,
    known_inputs_only: bool = True,
    slot: Slot | None = None,
) -> GraphRun[Any]:
    """Validate the inputs (with ``known_inputs_only``, each must be a parameter of some
    node; a Celery canvas step merges in whatever the previous step returned), wait for
    queue room, create the run (the graph stored, the roots marked published and leased),
    then publish the roots. A run that exists under the idempotency key is returned as it
    is. If this process dies after creating the run, the reconciler publishes the roots.
    ``slot``: the concurrency slot the run takes instead of its flow's (a schedule's line).
    """
    app = app or current_app._get_current_object()
    spec.check_inputs(inputs)
    if known_inputs_only:
        spec.check_known_inputs(inputs)
    for name, value in inputs.items():
        encode_value(value, lambda name=name: f"run input {name!r}")  # type: ignore[misc]
    check_deadline(deadline)
    if idempotency_key is not None and not isinstance(idempotency_key, str):
        raise TypeError(f"idempotency_key must be a string, got a {type(idempotency_key).__name__}")
    inputs_json = kjson.dumps(inputs)
    state = state_for(app)
    size = len(inputs_json.encode())
    if size > state.settings.max_input_bytes:
        raise InputTooLarge(
            f"the run's inputs are {size} bytes encoded, over graph_max_input_bytes "
            f"({state.settings.max_input_bytes}); pass large data by reference (a URL, a key "
            "in your own store) or raise the setting"
        )
    extra = dict(extra_fields or {})
    value = None
    if slot is None:
        slot, value = slot_of(spec, inputs, extra.get("flow"))
    run_id = run_id_for(idempotency_key)
    keyed = idempotency_key is not None
    if keyed and state.runs.started(run_id):
        return GraphRun(run_id, app=app)
    waits = False
    if slot is not None:
        extra.update(limit_scope=slot.scope, limit_group=slot.group)
        # asked before the run exists: a crash in between leaves a slot whose lease runs
        # out (the reconciler frees it), never a queued run nobody would start
        waits = state.limits.enter(slot, run_id, value, state.settings.queued_lease) > 0
    else:
        # a submission with the same key may start the run while this one waits
        _wait_for_room(app, state, spec, lambda: keyed and state.runs.started(run_id))
    # the roots' messages go while the creation's answer is on its way (one server): a
    # worker that meets a root before its run asks again shortly (NodeMessage.ahead); a
    # run that existed already turns them away as copies
    sent: list[BaseException | None] = []

    def send_roots() -> None:
        try:
            publish_nodes(app, spec, run_id, spec.roots, ahead=True)
        except Exception as exc:  # the run is failed below, once it is known to exist
            sent.append(exc)
        else:
            sent.append(None)

    created, detail = state.runs.create(
        run_id,
        spec,
        inputs_json,
        deadline=deadline,
        extra=extra,
        waits=waits,
        announce=False,
        meanwhile=None if waits else send_roots,
    )
    if not created:
        return GraphRun(run_id, app=app)
    flow, created_at = (extra_fields or {}).get("flow", ""), float(detail)
    run_started.send(sender=app, app=app, run_id=run_id, state=state, flow=flow)
    try:
        return _send_roots(app, state, spec, run_id, created_at, deadline, waits, slot, sent)
    finally:  # listed among the runs once its messages are out: one round trip less before
        _announce(state, run_id, created_at, flow or None)


def _send_roots(
    app: Any,
    state: State,
    spec: GraphSpec,
    run_id: str,
    created: float,
    deadline: float | None,
    waits: bool,
    slot: Slot | None,
    sent: list[BaseException | None],
) -> GraphRun[Any]:
    """Publish the roots of the run just created, unless ``sent`` says they went while it
    was created (None) or how the broker refused them (a run that waits for a slot:
    start it if the slot came meanwhile); the handle of the run."""
    if waits:
        assert slot is not None
        # a slot that freed while the run was being created went to it, but whoever
        # freed it found no run yet to start
        if state.limits.holds(slot.scope, slot.group, run_id):
            start_admitted(app, state, slot.scope, slot.group, [run_id])
        return _fresh(GraphRun(run_id, app=app, spec=spec, created=created), deadline)
    try:
        if not sent:
            publish_nodes(app, spec, run_id, spec.roots)
        elif sent[0] is not None:
            raise sent[0]
    except Exception as exc:
        error = error_record(
            "", type(exc).__name__, type(exc).__module__, f"publishing the root nodes failed: {exc}"
        )
        with contextlib.suppress(StoreError):
            end_run(app, state, run_id, "failed", error=error, unsent=True)
        raise PublishError(
            f"run {run_id}: the broker did not take the root messages ({exc}); the run is "
            "marked failed"
        ) from exc
    return _fresh(GraphRun(run_id, app=app, spec=spec, created=created), deadline)


def _announce(state: State, run_id: str, created: float, flow: str | None) -> None:
    """List the run among the runs; a Redis that fails now is logged, not raised: the run
    is on its way (a caller who took the error for a refusal would submit it twice), and
    only ``runs`` and the dashboard's lists miss it."""
    try:
        state.runs.announce(run_id, created, flow)
    except StoreError as exc:
        logger.warning(
            "celery-graph: run %s started but is not listed among the runs: %s", run_id, exc
        )


def _fresh(run: GraphRun[Any], deadline: float | None) -> GraphRun[Any]:
    """The handle of a run this call created: it has not ended, so its first ``get()``
    waits for the run's completion signal before reading anything (one round trip less),
    unless the run has a deadline, which bounds that wait and needs the record."""
    run._wait_first = deadline is None
    return run


def check_deadline(deadline: Any) -> None:
    """A run's deadline is None or a finite positive number of seconds."""
    if deadline is None:
        return
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
        raise TypeError(f"deadline must be a number of seconds, got a {type(deadline).__name__}")
    if not math.isfinite(deadline) or deadline <= 0:
        raise ValueError(f"deadline must be a positive number of seconds, got {deadline!r}")


def _exists(state: State, run_id: str) -> bool:
    """A run under this id that a retry must not start again (an unsent one may)."""
    try:
        record = state.runs.record(run_id)
    except RunNotFound:
        return False
    return not (record.get("status") == "failed" and record.get("unsent") == "1")


def _wait_for_room(app: Any, state: State, spec: GraphSpec, unless: Callable[[], bool]) -> None:
    """With graph_max_queue_depth set, wait until every queue the roots go to has room."""
    settings = state.settings
    if not settings.max_queue_depth:
        return
    default = app.conf.task_default_queue
    queues = sorted({spec.nodes[r].options.get("queue") or default for r in spec.roots})
    wait_for_room(app, queues, settings.max_queue_depth, settings.backpressure_timeout, unless)
