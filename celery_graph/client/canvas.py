"""A graph as a Celery signature: ``chain(a.s(), flow.s(), b.s())``, ``group(flow.s(), ...)``.

``flow.s(**inputs)`` stores the graph and returns a signature of ``celery_graph.run_graph``.
That task (registered on every app that uses celery-graph) starts the run (once per task
id, so a redelivered message does not start a second one), keeps what Celery would do
after it (the rest of the chain, callbacks, its group or chord membership) with the run,
and ends with ``Ignore``: no worker waits for the graph. When the run ends, the process
that ends it stores the graph's result under the task's id in the result backend and
continues the chain with it, or records the failure (``engine.lifecycle.after_run``).

The previous step of a chain feeds the graph's run inputs: a dict result is merged into
them, any other value becomes the run input ``input``.
"""

from __future__ import annotations

import json
from typing import Any

from celery import current_app, signature
from celery.exceptions import Ignore

from ..model import GraphSpec
from ..protocol import RUN_GRAPH
from ..state import state_for
from .submit import submit_spec

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
    spec: GraphSpec, inputs: dict[str, Any], app: Any = None, flow_name: str | None = None
) -> Any:
    """Store ``spec`` and return the signature that runs it with ``inputs`` (its runs
    record ``flow_name``, which travels in the signature: a beat entry keeps it)."""
    app = app or current_app._get_current_object()
    state_for(app).graphs.put(spec)
    kwargs: dict[str, Any] = {"graph": spec.graph_id, "inputs": inputs}
    if flow_name:
        kwargs["flow"] = flow_name
    return signature(RUN_GRAPH, kwargs=kwargs, app=app)


def register_run_graph(app: Any) -> None:
    """Register ``celery_graph.run_graph`` (:func:`run_graph`) on ``app``; done for every
    app that uses celery-graph (``celery_graph.install``)."""
    app.task(name=RUN_GRAPH, bind=True, shared=False)(run_graph)


def run_graph(
    self: Any, *previous: Any, graph: str, inputs: dict[str, Any], flow: str | None = None
) -> None:
    """Start the graph ``graph`` as a step of a Celery canvas (see the module doc)."""
    inputs = dict(inputs)
    if previous:
        value = previous[0]
        if isinstance(value, dict):
            inputs.update(value)
        else:
            inputs.setdefault("input", value)
    request = {f: getattr(self.request, f, None) for f in _REQUEST_FIELDS}
    spec = state_for(self.app).graphs.load(graph)
    extra = {"continuation": json.dumps(request)}
    if flow:
        extra["flow"] = flow
    submit_spec(
        spec,
        inputs,
        self.app,
        idempotency_key=f"celery-task:{self.request.id}",
        extra_fields=extra,
        known_inputs_only=not previous,  # a previous step's dict may carry anything
    )
    # Celery continues the canvas when the graph ends, not now.
    self.request.chain = None
    self.request.callbacks = None
    raise Ignore()
