"""A graph as a Celery signature: ``chain(a.s(), flow.s(), b.s())``, ``group(flow.s(), ...)``.

``flow.s(**inputs)`` stores the graph and returns a signature of ``celery_graph.run_graph``.
That task starts the run (once per task id, so a redelivered message does not start a
second one), keeps what Celery would do after it (the rest of the chain, callbacks, its
group or chord membership) with the run, and ends with ``Ignore``: no worker waits for the
graph. When the run ends, the worker that ends it stores the graph's result under the
task's id in the result backend and continues the chain with it, or records the failure.

The previous step of a chain feeds the graph's run inputs: a dict result is merged into
them, any other value becomes the run input ``input``.
"""

from __future__ import annotations

import json
from typing import Any

from celery import current_app, shared_task, signature
from celery.app.task import Context
from celery.exceptions import Ignore
from celery.utils.log import get_task_logger

from .errors import RunCancelled, RunFailed
from .runtime import engine_for

logger = get_task_logger("celery_graph")

RUN_GRAPH = "celery_graph.run_graph"
_REQUEST_FIELDS = ("id", "group", "group_index", "chord", "chain", "callbacks", "errbacks",
                   "root_id", "parent_id", "reply_to", "correlation_id")


def graph_signature(flow: Any, inputs: dict[str, Any], app: Any = None) -> Any:
    app = app or current_app._get_current_object()
    spec = flow.compile()  # graph errors now; missing inputs may still come from the chain
    engine_for(app).store.put(spec)
    return signature(RUN_GRAPH, kwargs={"graph": spec.graph_id, "inputs": inputs}, app=app)


@shared_task(name=RUN_GRAPH, bind=True)
def run_graph(self: Any, *previous: Any, graph: str, inputs: dict[str, Any]) -> None:
    """Start the graph ``graph`` as a step of a Celery canvas (see the module doc)."""
    from .submit import submit_spec

    inputs = dict(inputs)
    if previous:
        value = previous[0]
        if isinstance(value, dict):
            inputs.update(value)
        else:
            inputs.setdefault("input", value)
    request = {f: getattr(self.request, f, None) for f in _REQUEST_FIELDS}
    spec = engine_for(self.app).store.load(graph)
    submit_spec(spec, inputs, self.app, idempotency_key=f"celery-task:{self.request.id}",
                extra_fields={"continuation": json.dumps(request)})
    # Celery continues the canvas when the graph ends, not now.
    self.request.chain = None
    self.request.callbacks = None
    raise Ignore()


def continue_after_run(app: Any, run_id: str) -> None:
    """The run ended: if a Celery canvas started it, hand its result (or failure) on."""
    from .result import GraphRun

    engine = engine_for(app)
    raw = engine.client.hget(engine.keys.run(run_id), "continuation")
    if not raw:
        return
    request = json.loads(raw)
    ctx = Context(request)
    ctx.ignore_result = False
    backend = app.backend
    stores = type(backend).__name__ != "DisabledBackend"
    run = GraphRun(run_id, app=app)
    try:
        result = run.get(timeout=5)
    except (RunFailed, RunCancelled) as exc:
        if stores:
            backend.mark_as_failure(request["id"], exc, getattr(exc, "traceback", None), ctx)
        return
    if stores:
        backend.mark_as_done(request["id"], result, ctx)
    for callback in request.get("callbacks") or ():
        signature(callback, app=app).apply_async((result,), parent_id=request["id"],
                                                 root_id=request.get("root_id"))
    chain = request.get("chain") or []
    if chain:
        signature(chain[-1], app=app).apply_async(
            (result,), chain=chain[:-1] or None, parent_id=request["id"],
            root_id=request.get("root_id"),
        )
