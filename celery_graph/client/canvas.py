"""A graph as a Celery signature: ``chain(a.s(), flow.s(), b.s())``, ``group(flow.s(), ...)``,
a Celery beat entry, a django-celery-beat row.

``flow.s(**inputs)`` stores the graph and returns a signature of ``celery_graph.run_graph``
whose keyword arguments (``protocol.StartMessage``) carry the graph id, the run inputs,
the flow name, and what rebuilds the graph if the store lost it (it expired, Redis was
flushed or replaced): the compressed spec, or a flow reference (``flow_ref``) for a graph
too large to embed. Beat keeps those arguments for as long as the entry lives.

That task (registered on every app that uses celery-graph) starts the run once per task
id (the task id is the run's idempotency key, so a redelivered message does not start or
record a second one), stores the graph again when it is missing (after checking that it
hashes to the graph id), keeps what Celery would do after it (the rest of the chain,
callbacks, its group or chord membership) with the run, and ends with ``Ignore``: no
worker waits for the graph. When the run ends, the process that ends it stores the
graph's result under the task's id in the result backend and continues the chain with
it, or records the failure (``engine.lifecycle.after_run``).

A message that cannot start its run (the graph gone with nothing to rebuild it, a flow
reference that does not import or compiles to another graph, invalid inputs, malformed
fields) is recorded as a failed run with the reason (``engine.lifecycle.refuse_run``),
seen by ``celery-graph runs``, ``status`` and the dashboard like any other run. Redis or
the broker out of reach is retried instead.

The previous step of a chain feeds the graph's run inputs: a dict result is merged into
them, any other value becomes the run input ``input``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from celery import current_app, signature
from celery.exceptions import Ignore
from kombu.utils import json as kjson

from ..codec import exception_record, sha256
from ..engine.lifecycle import refuse_run
from ..errors import (
    ConfigurationError,
    FlowChanged,
    GraphCorrupted,
    GraphDefinitionError,
    GraphNotFound,
    PublishError,
    SignatureTooLarge,
    StoreUnavailable,
)
from ..model import GraphSpec
from ..protocol import (
    EMBED_LIMIT,
    RUN_GRAPH,
    ScheduleSpec,
    StartMessage,
    embed_spec,
    is_graph_id,
)
from ..refs import import_ref
from ..state import State, state_for
from .schedules import fire
from .submit import run_id_for, submit_spec

logger = logging.getLogger("celery_graph")

RETRY_DELAY = 5.0  # seconds between tries while Redis or the broker is out of reach
RETRIES = 60  # tries before the message gives up (five minutes)

_REQUEST_FIELDS = (
    "id",
    "group",
    "group_index",
    "chord",
    "chain",
    "callbacks",
    "errbacks",
    "root_id",
    "parent_id",
    "reply_to",
    "correlation_id",
)


def graph_signature(
    spec: GraphSpec,
    inputs: dict[str, Any],
    app: Any = None,
    flow_name: str | None = None,
    flow_ref: str | None = None,
    schedule: ScheduleSpec | None = None,
) -> Any:
    """Store ``spec`` and return the signature that runs it with ``inputs`` (its runs
    record ``flow_name``). The signature embeds the compressed spec, or with ``flow_ref``
    (``MODULE:ATTR`` of a flow that compiles to ``spec``, checked now) names the flow
    instead; either rebuilds the graph on a worker that finds it gone. SignatureTooLarge for a
    spec over ``EMBED_LIMIT`` without ``flow_ref``, before anything is stored."""
    app = app or current_app._get_current_object()
    if flow_ref is None:
        embedded = embed_spec(spec.blob)
        if len(embedded) > EMBED_LIMIT:
            raise SignatureTooLarge(
                f"graph {spec.graph_id} ({len(spec.nodes)} nodes) compresses to "
                f"{len(embedded)} characters, over the {EMBED_LIMIT} a signature embeds to "
                "rebuild it; name the flow instead, as a module attribute the workers import: "
                "flow.s(flow_ref='proj.flows:nightly', ...)"
            )
        message = StartMessage(spec.graph_id, inputs, flow_name, spec=embedded, schedule=schedule)
    else:
        found = flow_spec(flow_ref)
        if found.graph_id != spec.graph_id:
            raise GraphDefinitionError(
                f"flow_ref {flow_ref!r} names a flow of graph {found.graph_id}, not this "
                f"flow's graph {spec.graph_id}: name the module attribute this flow is"
            )
        message = StartMessage(spec.graph_id, inputs, flow_name, ref=flow_ref, schedule=schedule)
    state_for(app).graphs.put(spec)
    return signature(RUN_GRAPH, kwargs=message.kwargs(), app=app)


def flow_spec(ref: str) -> GraphSpec:
    """The graph of the flow at ``ref`` (``MODULE:ATTR``, imported here)."""
    obj = import_ref(ref, "flow_ref")
    compile_ = getattr(obj, "compile", None)
    spec = compile_() if callable(compile_) else None
    if not isinstance(spec, GraphSpec):
        raise ConfigurationError(
            f"flow_ref {ref!r} is a {type(obj).__name__}, not a celery-graph flow"
        )
    return spec


def register_run_graph(app: Any) -> None:
    """Register ``celery_graph.run_graph`` (:func:`run_graph`) on ``app``; done for every
    app that uses celery-graph (``celery_graph.install``)."""
    app.task(name=RUN_GRAPH, bind=True, shared=False)(run_graph)


def run_graph(self: Any, *previous: Any, **fields: Any) -> None:
    """Start the graph a ``run_graph`` message names (see the module doc); ``fields`` are
    a :class:`~celery_graph.protocol.StartMessage`'s."""
    state = state_for(self.app)
    key = f"celery-task:{self.request.id}"
    run_id = run_id_for(key)
    request = {f: getattr(self.request, f, None) for f in _REQUEST_FIELDS}
    try:
        if not state.runs.started(run_id):  # else a redelivered message: nothing to do
            _start_or_refuse(self.app, state, run_id, fields, previous, key, request)
    except (StoreUnavailable, PublishError) as exc:
        # Redis or the broker out of reach: try again with the same task id (so the same
        # run id); an unsent run is started afresh
        raise self.retry(exc=exc, countdown=RETRY_DELAY, max_retries=RETRIES) from exc
    # Celery continues the canvas when the graph ends, not now.
    self.request.chain = None
    self.request.callbacks = None
    raise Ignore()


def _start_or_refuse(
    app: Any,
    state: State,
    run_id: str,
    fields: dict[str, Any],
    previous: tuple[Any, ...],
    key: str,
    request: dict[str, Any],
) -> None:
    """Start the run; anything but Redis or the broker out of reach that stops it is
    recorded as a failed run."""
    try:
        _start(app, state, fields, previous, key, request)
    except (StoreUnavailable, PublishError):
        raise
    except Exception as exc:
        _refuse(app, state, run_id, fields, previous, request, exc)


def _start(
    app: Any,
    state: State,
    fields: dict[str, Any],
    previous: tuple[Any, ...],
    key: str,
    request: dict[str, Any],
) -> None:
    message = StartMessage.parse(fields)
    spec = graph_for(state, message)
    extra = {"continuation": json.dumps(request)}
    if message.flow:
        extra["flow"] = message.flow
    if message.schedule is not None:  # an entry of schedule(): its policies decide
        fire(app, state, spec, message.schedule, _inputs(message.inputs, previous), key, extra)
        return
    submit_spec(
        spec,
        _inputs(message.inputs, previous),
        app,
        idempotency_key=key,
        extra_fields=extra,
        known_inputs_only=not previous,  # a previous step's dict may carry anything
    )


def _inputs(inputs: dict[str, Any], previous: tuple[Any, ...]) -> dict[str, Any]:
    inputs = dict(inputs)
    if previous:
        value = previous[0]
        if isinstance(value, dict):
            inputs.update(value)
        else:
            inputs.setdefault("input", value)
    return inputs


def graph_for(state: State, message: StartMessage) -> GraphSpec:
    """The graph ``message`` names: from the store, or rebuilt from what the message
    carries (and stored again) when the store lost it. GraphNotFound when the message
    carries nothing to rebuild it; GraphCorrupted or FlowChanged when what it carries is
    not that graph."""
    try:
        return state.graphs.load(message.graph)
    except GraphNotFound as missing:
        if message.spec is not None:
            raw = message.spec_bytes()
            if sha256(raw) != message.graph:
                raise GraphCorrupted(
                    f"graph {message.graph} is not in the store, and the spec this run_graph "
                    f"message carries hashes to {sha256(raw)}, not to that id: refusing to "
                    "run it"
                ) from missing
            spec, source = GraphSpec.from_blob(raw, message.graph), "its embedded spec"
        elif message.ref is not None:
            spec, source = flow_spec(message.ref), f"the flow {message.ref}"
            if spec.graph_id != message.graph:
                raise FlowChanged(
                    f"graph {message.graph} is not in the store, and the flow "
                    f"{message.ref} now compiles to graph {spec.graph_id}: its code changed "
                    "since the entry was made; make the entry again from the flow (flow.s())"
                ) from missing
        else:
            raise GraphNotFound(
                f"{missing}; this run_graph message carries nothing to rebuild it (only the "
                "graph id, like signatures made by celery-graph 0.1): make the beat entry "
                "again from flow.s(), which carries the graph"
            ) from missing
        state.graphs.put(spec)
        logger.warning(
            "celery-graph: graph %s was not in the store (expired, flushed or a new Redis); "
            "stored it again from %s",
            message.graph,
            source,
        )
        return spec


def _refuse(
    app: Any,
    state: State,
    run_id: str,
    fields: dict[str, Any],
    previous: tuple[Any, ...],
    request: dict[str, Any],
    exc: Exception,
) -> None:
    """Record the run this message could not start as failed, naming why."""
    graph = fields.get("graph")
    flow = fields.get("flow")
    inputs = fields.get("inputs")
    try:
        inputs_json = kjson.dumps(_inputs(inputs if isinstance(inputs, dict) else {}, previous))
    except (TypeError, ValueError):
        inputs_json = "{}"
    extra = {"continuation": json.dumps(request)}
    if isinstance(flow, str) and 0 < len(flow) <= 200:
        extra["flow"] = flow
    logger.error(
        "celery-graph: run_graph message %s could not start its run %s (recorded as failed): "
        "%s: %s",
        request["id"],
        run_id,
        type(exc).__name__,
        exc,
    )
    refuse_run(
        app,
        state,
        run_id,
        graph_id=graph if is_graph_id(graph) else "",
        inputs_json=inputs_json,
        error=exception_record("", exc),
        extra=extra,
    )
