"""The Celery side of a node: the base task of every celery-graph task, the body that
tells a node message from a plain call, the task that runs existing tasks as nodes, and
the handler for node messages a worker does not know."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from celery import Task, current_app, shared_task
from celery.signals import task_unknown
from celery.utils.log import get_task_logger

from ..errors import UnknownTask
from ..protocol import CALL_TASK, GRAPH_KWARG, NodeMessage, graph_fields
from .node import NodeRun, fail_node

logger = get_task_logger("celery_graph")


class GraphTask(Task):
    """Base class of every celery-graph task. A message without ``_graph`` runs the
    function as a plain Celery task; with it, the function runs as a node of a run."""

    typing = False  # graph messages carry the extra ``_graph`` keyword

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        fields = graph_fields(kwargs)
        if fields:
            try:
                fail_node(self.app, NodeMessage.parse(fields), exc,
                          einfo.traceback if einfo else "")
            except Exception:  # the task failure itself is already reported by Celery
                logger.exception("celery-graph: could not record the failure of %s", fields)
        return super().on_failure(exc, task_id, args, kwargs, einfo)


def task_body(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The body of the Celery task registered for ``fn`` (bound: ``self`` is the task)."""

    def body(self: Task, *args: Any, **kwargs: Any) -> Any:
        fields = kwargs.pop(GRAPH_KWARG, None)
        if fields is None:
            return fn(*args, **kwargs)
        return NodeRun(self, fn, NodeMessage.parse(fields), kwargs).run()

    body.__name__ = fn.__name__
    body.__qualname__ = fn.__qualname__
    body.__module__ = fn.__module__
    body.__doc__ = fn.__doc__
    body.__wrapped__ = fn  # type: ignore[attr-defined]
    return body


def _call_outside_a_graph(*args: Any, **kwargs: Any) -> Any:
    raise TypeError("celery_graph.call runs existing tasks as graph nodes only; see node()")


_call_outside_a_graph.__name__ = "call"
# The task every node(existing_task) runs as; registered on every app, like @task.
shared_task(name=CALL_TASK, bind=True, base=GraphTask)(task_body(_call_outside_a_graph))


@task_unknown.connect
def _unknown_task(sender=None, message=None, exc=None, name=None, id=None, **kw):
    """A worker got a node whose task it does not know (a graph submitted by newer code,
    or a worker missing a module): Celery drops such messages, so fail the run loudly
    rather than let it wait forever."""
    try:
        body = message.decode() if message is not None else None
        kwargs = body[1] if isinstance(body, (list, tuple)) and len(body) > 1 else {}
        fields = graph_fields(kwargs)
        if not fields:
            return
        parsed = NodeMessage.parse(fields)
        error = UnknownTask(
            f"node {parsed.node_id!r}: task {name!r} is not registered on the worker on "
            f"{socket.gethostname()}; deploy the module that defines it to every worker "
            "consuming this queue"
        )
        fail_node(current_app._get_current_object(), parsed, error, "")
    except Exception:
        logger.exception("celery-graph: could not fail the run of unknown task %s", name)
