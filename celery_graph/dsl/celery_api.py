"""Celery's Task API on a node: a ``TaskNode`` used on its own, outside any graph, is
the registered Celery task (``delay``, ``s``, ``apply_async``...). Bound keyword
arguments, if any, are passed too; the call's own keyword arguments win."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar

from celery import current_app

from ..dispatch import send_plain
from ..errors import GraphDefinitionError
from ..model import ResultOf
from .signatures import signature_of

# Keywords of Celery's ``apply_async`` that a node's function may also have as parameters:
# on a bare task they keep Celery's meaning.
CELERY_OPTIONS = frozenset(
    (
        "add_to_parent",
        "chain",
        "chord",
        "compression",
        "connection",
        "countdown",
        "delivery_mode",
        "eta",
        "exchange",
        "expires",
        "group_id",
        "group_index",
        "headers",
        "ignore_result",
        "link",
        "link_error",
        "parent_id",
        "priority",
        "producer",
        "publisher",
        "queue",
        "reply_to",
        "result_cls",
        "retries",
        "retry",
        "retry_policy",
        "root_id",
        "router",
        "routing_key",
        "serializer",
        "shadow",
        "soft_time_limit",
        "stamped_headers",
        "task_id",
        "time_limit",
    )
)
# Keywords of a graph's ``apply_async`` that mean nothing to Celery's.
GRAPH_RUN_OPTIONS = ("idempotency_key", "deadline", "flow_name")


P = ParamSpec("P")
R = TypeVar("R", covariant=True)


class CeleryTaskAPI(Generic[P, R]):
    """What a node answers as Celery's task. The graph value (``TaskNode``) provides
    the attributes below. ``delay`` and ``si`` are checked against the function's
    parameters (``P``); ``s`` is not, as Celery's partial signatures are completed later
    (a chain passes the previous result)."""

    fn: Callable[P, R]
    task_name: str
    id: str
    bound: tuple[tuple[str, Any], ...]

    @property
    def celery_task(self) -> Any:
        """The registered Celery task (of the current app), for anything of Celery's Task
        API the node does not repeat (``.map()``, ``.chunks()``, ``.retry()``...)."""
        return current_app.tasks[self.task_name]

    @property
    def name(self) -> str:
        """The Celery task name (as ``Task.name``)."""
        return self.task_name

    def _kwargs(self, kwargs: Any) -> Any:
        if not self.bound:
            return kwargs
        for name, value in self.bound:
            if isinstance(value, ResultOf) and name not in (kwargs or {}):
                raise GraphDefinitionError(
                    f"node {self.id!r}: {name}={value!r} is an upstream result, which "
                    "only a graph run can fill; pass the value here, or run the node in "
                    "a graph after its source"
                )
        return {**dict(self.bound), **(kwargs or {})}

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Celery's ``Task.delay``: send the task on its own; an ``AsyncResult``.
        (A node's start delay in a graph is :meth:`delay_by`.)"""
        return send_plain(self.celery_task, args, self._kwargs(kwargs), {})

    def apply_async(  # Celery's meaning on a bare task
        self, args: Any = None, kwargs: Any = None, **options: Any
    ) -> Any:
        """Celery's ``Task.apply_async(args, kwargs, **options)``: an ``AsyncResult``.

        For a run of this node as a one-node graph, ``node.as_graph().apply_async(**inputs)``.
        """
        self._refuse_run_inputs("apply_async", options)
        return send_plain(self.celery_task, args, self._kwargs(kwargs), options)

    def apply(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        """Celery's ``Task.apply``: run the task here, now; an ``EagerResult``."""
        self._refuse_run_inputs("apply", options)
        return self.celery_task.apply(args, self._kwargs(kwargs), **options)

    def signature(self, args: Any = None, *starargs: Any, **starkwargs: Any) -> Any:
        """Celery's ``Task.signature``."""
        sig = self.celery_task.signature(args, *starargs, **starkwargs)
        if self.bound:
            sig.kwargs = self._kwargs(sig.kwargs)
        return sig

    def s(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's ``Task.s``: a signature of the task, for chains, groups and chords.
        (A one-node graph's signature is ``node.as_graph().s(**inputs)``.)"""
        return self.signature(args, kwargs)

    def si(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Celery's ``Task.si``: an immutable signature."""
        return self.signature(args, kwargs, immutable=True)

    def AsyncResult(self, task_id: str, **kwargs: Any) -> Any:  # Celery's name
        """Celery's ``Task.AsyncResult``."""
        return self.celery_task.AsyncResult(task_id, **kwargs)

    def _refuse_run_inputs(self, method: str, options: dict[str, Any]) -> None:
        """A graph's keywords given to Celery's call are an error, not a silent option."""
        params = signature_of(self.fn)
        wrong = sorted(
            k
            for k in options
            if k in GRAPH_RUN_OPTIONS or (k in params and k not in CELERY_OPTIONS)
        )
        if wrong:
            raise TypeError(
                f"node {self.id!r}: {method}() is Celery's Task.{method}(args, kwargs, "
                f"**options), and {', '.join(map(repr, wrong))} are not Celery options; "
                "pass task arguments as kwargs={...}, or run the node as a one-node graph "
                f"with {self.id}.as_graph().apply_async(**inputs)"
            )
