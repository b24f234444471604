"""Starting runs: validation, idempotency keys, backpressure, deadlines, and resume."""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from typing import Any

from celery import current_app
from kombu.utils import json as kjson

from ..codec import encode_value, error_record
from ..dispatch import publish_nodes, wait_for_room
from ..errors import PublishError, StoreError
from ..lifecycle import end_run
from ..model import GraphSpec
from ..state import State, state_for
from .run import GraphRun


def submit_spec(
    spec: GraphSpec,
    inputs: dict[str, Any],
    app: Any = None,
    *,
    idempotency_key: str | None = None,
    deadline: float | None = None,
    extra_fields: dict[str, str] | None = None,
) -> GraphRun:
    """Validate the inputs, store the graph and the run record, then publish the roots."""
    app = app or current_app._get_current_object()
    spec.check_inputs(inputs)
    for name, value in inputs.items():
        encode_value(value, lambda name=name: f"run input {name!r}")  # type: ignore[misc]
    if deadline is not None and deadline <= 0:
        raise ValueError(f"deadline must be a positive number of seconds, got {deadline!r}")
    inputs_json = kjson.dumps(inputs)
    state = state_for(app)
    run_id = uuid.uuid4().hex

    digest = None
    if idempotency_key is not None:
        digest = hashlib.sha256(str(idempotency_key).encode()).hexdigest()
        existing = state.runs.claim_idempotency(digest, run_id)
        if existing:
            return GraphRun(existing, app=app)

    try:
        _wait_for_room(app, state, spec)
        extra: dict[str, Any] = dict(extra_fields or {})
        if deadline is not None:
            extra["deadline"] = f"{time.time() + deadline:.6f}"
        state.runs.create(run_id, spec, inputs_json, extra)
    except BaseException:
        _release(state, digest, run_id)
        raise
    try:
        publish_nodes(app, spec, run_id, spec.roots)
    except Exception as exc:
        _release(state, digest, run_id)
        error = error_record("", type(exc).__name__, type(exc).__module__,
                             f"publishing the root nodes failed: {exc}")
        with contextlib.suppress(StoreError):
            end_run(app, state, run_id, "failed", spec=spec, error=error)
        raise PublishError(
            f"run {run_id}: the broker did not take the root messages ({exc}); the run is "
            "marked failed"
        ) from exc
    return GraphRun(run_id, app=app, spec=spec)


def _release(state: State, digest: str | None, run_id: str) -> None:
    """A submission that did not start lets a retry with the same key start afresh."""
    if digest is not None:
        with contextlib.suppress(Exception):
            state.runs.release_idempotency(digest, run_id)


def _wait_for_room(app: Any, state: State, spec: GraphSpec) -> None:
    """With graph_max_queue_depth set, wait until every queue the roots go to has room."""
    settings = state.settings
    if not settings.max_queue_depth:
        return
    default = app.conf.task_default_queue
    queues = sorted({spec.nodes[r].options.get("queue") or default for r in spec.roots})
    wait_for_room(app, queues, settings.max_queue_depth, settings.backpressure_timeout)
