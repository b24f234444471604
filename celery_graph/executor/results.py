"""Node results where Celery users look for them: the app's result backend.

Node messages are sent with ``ignore_result=True`` (the graph Redis holds every result);
when the app has a result backend and ``graph_store_node_results`` is on (the default),
each node's outcome is also written there under the node's task id, ``<run id>:<node>``
(and under the id of the message that ran it, ``...~<epoch>``, after a resume), so
``app.AsyncResult(task_id)``, django-celery-results and anything else reading the backend
see SUCCESS with the node's result, FAILURE with its exception, or REVOKED. A map's items
and chunks are not written one by one: the map node is, with the list of its results.

A backend that cannot be reached never fails a node: the write is logged and skipped.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import states

from ..config import Settings
from ..protocol import NodeMessage, NodeTaskId, task_id_for

logger = logging.getLogger("celery_graph")


def backend_of(app: Any) -> Any | None:
    """The app's result backend when node results go there, else None."""
    try:
        if not Settings.from_app(app).store_node_results:
            return None
        backend = app.backend
    except Exception:  # a backend that cannot even load: Celery itself reports it
        logger.warning("celery-graph: the result backend could not be loaded", exc_info=True)
        return None
    return None if type(backend).__name__ == "DisabledBackend" else backend


def _ids(run_id: str, node_id: str, epoch: int) -> list[str]:
    base = task_id_for(run_id, node_id)
    return [base] if not epoch else [base, task_id_for(run_id, node_id, epoch)]


def _store(app: Any, task_ids: list[str], what: str, write: Any) -> None:
    backend = backend_of(app)
    if backend is None:
        return
    for task_id in task_ids:
        try:
            write(backend, task_id)
        except Exception as exc:  # the graph state has it: the backend is a mirror
            logger.warning(
                "celery-graph: could not store %s of %s in the result backend: %s",
                what,
                task_id,
                exc,
            )


def store_success(app: Any, message: NodeMessage, value: Any, request: Any = None) -> None:
    """The node of ``message`` succeeded with ``value`` (for a map: its list)."""
    _store(
        app,
        _ids(message.run_id, message.node_id, message.epoch),
        "the result",
        lambda b, tid: b.store_result(tid, value, states.SUCCESS, request=request),
    )


def store_failure(
    app: Any, message: NodeMessage, exc: BaseException, traceback: str = "", request: Any = None
) -> None:
    """The node of ``message`` failed with ``exc`` after its retries."""
    _store(
        app,
        _ids(message.run_id, message.node_id, message.epoch),
        "the failure",
        lambda b, tid: b.store_result(tid, exc, states.FAILURE, traceback, request=request),
    )


def store_revoked(app: Any, task_id: str, reason: str, request: Any = None) -> None:
    """The node message ``task_id`` was revoked through Celery."""
    parsed = NodeTaskId.parse(task_id)
    if parsed is None:
        return
    _store(
        app,
        sorted({task_id, task_id_for(parsed.run_id, parsed.node_id)}),
        "the revoke",
        lambda b, tid: b.mark_as_revoked(tid, reason, request=request),
    )
