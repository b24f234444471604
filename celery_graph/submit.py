"""Starting runs: validation, idempotency keys, backpressure, deadlines, and resume."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import uuid
from typing import TYPE_CHECKING, Any

from celery import current_app
from kombu.utils import json as kjson

from .errors import Backpressure, PublishError, StoreError
from .runtime import Engine, encode_value, engine_for, publish
from .store import translate_errors

if TYPE_CHECKING:
    from .dsl import Flow
    from .result import GraphRun
    from .spec import GraphSpec


def submit(
    flow: Flow,
    inputs: dict[str, Any],
    app: Any = None,
    *,
    idempotency_key: str | None = None,
    deadline: float | None = None,
) -> GraphRun:
    """Validate, store the graph and the run record, then publish the root nodes."""
    return submit_spec(flow.compile(), inputs, app, idempotency_key=idempotency_key,
                       deadline=deadline)


def submit_spec(
    spec: GraphSpec,
    inputs: dict[str, Any],
    app: Any = None,
    *,
    idempotency_key: str | None = None,
    deadline: float | None = None,
    extra_fields: dict[str, str] | None = None,
) -> GraphRun:
    from .result import GraphRun

    app = app or current_app._get_current_object()
    spec.check_inputs(inputs)
    for name, value in inputs.items():
        encode_value(value, lambda name=name: f"run input {name!r}")  # type: ignore[misc]
    if deadline is not None and deadline <= 0:
        raise ValueError(f"deadline must be a positive number of seconds, got {deadline!r}")
    inputs_json = kjson.dumps(inputs)
    engine = engine_for(app)
    run_id = uuid.uuid4().hex

    idem_key = None
    if idempotency_key is not None:
        digest = hashlib.sha256(str(idempotency_key).encode()).hexdigest()
        idem_key = engine.keys.idempotency(digest)
        claimed = translate_errors(
            "claiming an idempotency key",
            lambda: engine.client.set(idem_key, run_id, nx=True, ex=engine.settings.run_ttl),
        )
        if not claimed:
            client: Any = engine.client
            existing = translate_errors("reading an idempotency key", lambda: client.get(idem_key))
            if existing:
                return GraphRun(existing.decode(), app=app)

    try:
        wait_for_queue_room(app, engine, spec)
        extra: dict[str, Any] = {"sinks": json.dumps(list(spec.sinks)), **(extra_fields or {})}
        if deadline is not None:
            extra["deadline"] = f"{time.time() + deadline:.6f}"
        keys = engine.keys
        pipe = engine.client.pipeline(transaction=False)
        engine.store.put_commands(pipe, spec)
        engine.runs.create_commands(pipe, run_id, spec, inputs_json, extra)
        pipe.hset(keys.nodes(run_id), mapping={f"{r}:dispatch": "published" for r in spec.roots})
        pipe.expire(keys.nodes(run_id), engine.settings.run_ttl)
        translate_errors("creating a run", lambda: pipe.execute())
    except BaseException:
        _release_idempotency(engine, idem_key, run_id)
        raise
    engine.store._remember(spec)
    try:
        publish(app, spec, spec.graph_id, run_id, spec.roots)
    except Exception as exc:
        _release_idempotency(engine, idem_key, run_id)
        error = json.dumps(
            {"node": "", "type": type(exc).__name__, "module": type(exc).__module__,
             "message": f"publishing the root nodes failed: {exc}", "traceback": ""}
        )
        with contextlib.suppress(StoreError):
            engine.barrier.finish(spec, run_id, "failed", "", error)
        raise PublishError(
            f"run {run_id}: the broker did not take the root messages ({exc}); the run is "
            "marked failed"
        ) from exc
    return GraphRun(run_id, app=app, spec=spec)


def _release_idempotency(engine: Engine, idem_key: str | None, run_id: str) -> None:
    """A submission that did not start lets a retry with the same key start afresh."""
    if idem_key is None:
        return
    with contextlib.suppress(Exception):
        if engine.client.get(idem_key) == run_id.encode():
            engine.client.delete(idem_key)


def queue_depth(app: Any, queue: str) -> int:
    """Messages waiting in ``queue`` on the app's broker (Redis or AMQP)."""
    with app.connection_for_read() as conn:
        try:
            _name, count, _consumers = conn.default_channel.queue_declare(queue=queue, passive=True)
        except Exception:  # a queue that does not exist yet holds nothing
            return 0
    return int(count)


def wait_for_queue_room(app: Any, engine: Engine, spec: GraphSpec) -> None:
    """With graph_max_queue_depth set, wait (up to graph_backpressure_timeout) until every
    queue the root nodes go to is below it, instead of flooding the broker."""
    limit = engine.settings.max_queue_depth
    if not limit:
        return
    default = app.conf.task_default_queue
    queues = sorted({spec.nodes[r].options.get("queue") or default for r in spec.roots})
    deadline = time.monotonic() + engine.settings.backpressure_timeout
    pause = 0.05
    while True:
        depths = {q: queue_depth(app, q) for q in queues}
        full = {q: d for q, d in depths.items() if d >= limit}
        if not full:
            return
        if time.monotonic() >= deadline:
            detail = ", ".join(f"{q!r} holds {d}" for q, d in full.items())
            raise Backpressure(
                f"broker queue too deep for {engine.settings.backpressure_timeout:g} s: {detail} "
                f"(graph_max_queue_depth={limit}); add workers or retry later"
            )
        # No broker signal tells when a queue drains, so this waits in growing steps.
        time.sleep(pause)
        pause = min(pause * 2, 1.0)


def resume(run: GraphRun) -> GraphRun:
    """Re-dispatch the failed and unfinished nodes of a failed or cancelled run, keeping
    the results already stored."""
    engine = engine_for(run.app)
    spec = run.spec()
    done = set(engine.runs.results(run.id))
    frontier = [
        n for n in spec.order
        if n not in done and all(p in done for p in spec.nodes[n].preds)
    ]
    engine.barrier.resume(spec, run.id, frontier)
    publish(run.app or current_app._get_current_object(), spec, spec.graph_id, run.id, frontier)
    return run
