"""The Celery side of a node: the base task of every celery-graph task, ``adopt`` (the
wrapper that tells a node message from a plain call, on ``@task`` tasks and on existing
tasks alike), the failure, retry and revoke hooks of node messages and the handler for
node messages a worker does not know (Celery signal receivers that leave every other message
alone, connected by ``connect_signals`` when an app is installed, never at import).

Infrastructure errors are never node failures: when Redis or the broker cannot be reached
while a node begins, completes or publishes its successors, the message is sent again with
a growing delay (1, 2, 4 ... 30 s), without counting as one of the node's retries; when
even that send fails, the message is handed back to the broker, and the node's lease
makes the reconciler publish it again. Only the node's own function failing, after its
retries, fails the node.
"""

from __future__ import annotations

import datetime
import functools
import socket
from collections.abc import Callable
from typing import Any

from celery import Task, current_app
from celery.exceptions import Reject, Retry
from celery.signals import task_failure, task_retry, task_revoked, task_unknown
from celery.utils.log import get_task_logger

from ..codec import error_record, exception_record
from ..config import pinned
from ..dispatch import redeliver
from ..engine.lifecycle import message_revoked
from ..engine.results import store_failure
from ..errors import (
    BrokerUnavailable,
    CeleryGraphError,
    MalformedMessage,
    StoreUnavailable,
    UnknownTask,
)
from ..protocol import ADOPTED, CALL_TASK, GRAPH_KWARG, WAIT_TASK, NodeMessage, graph_fields
from ..state import Mode, state_for
from . import eager
from .gate import Gate, TaskLimits
from .node import NodeRun, fail_node

logger = get_task_logger("celery_graph.task")

INFRASTRUCTURE = (StoreUnavailable, BrokerUnavailable)
MAX_BACKOFF = 30.0


def backoff(attempt: int) -> float:
    """Seconds before sending a message again after its ``attempt``-th infrastructure error."""
    return min(2.0 ** max(attempt - 1, 0), MAX_BACKOFF)


def send_again(
    task: Task, message: NodeMessage, exc: Exception, failure: str | None = None
) -> Exception:
    """The exception that ends this delivery after an infrastructure error: a Retry when
    the message could be sent again, else a Reject that hands it back to the broker. A
    delivery that began an attempt hands the node over to the message it sends."""
    again = message.again(failure, getattr(task.request, "graph_attempt", 0))
    countdown = backoff(again.infra)
    try:
        redeliver(task, again.fields(), countdown)
    except BrokerUnavailable as down:
        logger.warning("celery-graph: %s; %s handed back to the broker", down, message.task_id)
        return Reject(exc, requeue=True)
    logger.warning("celery-graph: %s: %s; sent again in %g s", message.task_id, exc, countdown)
    return Retry(str(exc), exc=exc, when=countdown)


class GraphTask(Task):
    """Base class of every ``@task``. Acks late and rejects on a lost worker by default,
    whatever the app's settings, so any Celery worker is crash-safe for graph nodes
    (``@task(acks_late=False)`` opts out). Everything else is Celery's ``Task``: a message
    without ``_graph`` runs the function exactly as Celery would (see :func:`adopt`).
    """

    acks_late = True
    reject_on_worker_lost = True

    def __init__(self) -> None:
        adopt(self)


def adopt(task: Task) -> Task:
    """Let ``task`` run node messages under its own name (idempotent; returns ``task``).

    Celery's worker calls ``task.run`` (or ``task.__call__``, which calls ``task.run``);
    this puts a thin wrapper in front of the instance's ``run``: a message whose keyword
    arguments carry ``_graph`` runs as a node of a run (:func:`run_node`), any other call
    goes to the task's own ``run`` unchanged, so the task's code, its pydantic validation,
    ``bind``, routes, rate and time limits all stay Celery's. The argument check Celery
    makes when sending (``typing``) passes a node message, whose arguments come from the
    run when it runs, so a node can be retried with ``self.retry()`` like any task and
    sent again after an infrastructure error. Every ``@task`` is adopted when Celery creates it;
    other tasks when ``node()`` wraps them and, in a worker, the tasks of the worker's app
    when it starts (:func:`adopt_tasks`, from the bootstep).
    """
    if task.__dict__.get(ADOPTED):
        return task
    plain = task.run

    @functools.wraps(plain)
    def run(*args: Any, **kwargs: Any) -> Any:
        fields = kwargs.pop(GRAPH_KWARG, None)
        if fields is None:
            return plain(*args, **kwargs)
        if eager.restore_request(task, fields):  # an eager successor's, hidden (eager.py)
            try:
                return run_node(task, plain, fields, kwargs)
            finally:
                task.pop_request()
        return run_node(task, plain, fields, kwargs)

    task.run = run
    header = getattr(task, "__header__", None)
    if callable(header):

        def check(*args: Any, **kwargs: Any) -> Any:
            if GRAPH_KWARG in kwargs:
                # a node message carries its bound arguments only: the rest come from the
                # run's inputs and the upstream results when it runs (checked when the
                # graph was built), so Celery's check would refuse every re-send of it
                return None
            return header(*args, **kwargs)

        task.__header__ = check
    task.__dict__[ADOPTED] = True
    return task


def adopted(task: Task) -> bool:
    """True when ``task`` runs node messages (see :func:`adopt`)."""
    return bool(task.__dict__.get(ADOPTED))


def adopt_tasks(app: Any) -> None:
    """Let every task of ``app`` run node messages under its own name (``node()`` on an
    existing task). A worker does it before its pool forks and before its consumer builds
    the tasks' tracers, which keep each task's ``run``; Celery's own tasks are left alone."""
    for name, known in list(app.tasks.items()):
        if not name.startswith("celery."):
            adopt(known)


def run_node(task: Task, fn: Callable[..., Any], fields: Any, kwargs: dict[str, Any]) -> Any:
    """Run one node message: ``fields`` is its ``_graph`` keyword, ``kwargs`` the node's
    bound arguments, ``fn`` the task's own ``run``."""
    try:
        message = NodeMessage.parse(fields)
    except MalformedMessage as exc:  # not celery-graph's: dropped, never run or requeued
        logger.error(
            "celery-graph: rejected %s without requeue, a malformed node message: %s",
            task.request.id,
            exc,
        )
        raise Reject(str(exc), requeue=False) from None
    # the settings are read once for the delivery and the eager successors it runs, not
    # in each place that asks (a setting changed meanwhile: seen from the next delivery)
    with pinned(task.app):
        try:
            if message.failure is not None:
                fail_node(task.app, message, message.failure)
                return None
            limits = TaskLimits.of(task)
            keep = eager.keeper_for(task)
            ahead = eager.begun_ahead(message)  # begun as its predecessor completed
            if limits is None:
                node = NodeRun(task, fn, message, kwargs, keep=keep, begun=ahead)
                result = node.run()
            else:
                gate = Gate(task, message, limits, state_for(task.app))
                if not gate.enter():  # over the task's fleet-wide limits: waits, no worker
                    return None
                began: str | None = None
                try:
                    node = NodeRun(task, fn, message, kwargs, keep=keep, begun=ahead)
                    try:
                        result = node.run()
                    finally:
                        began = node.began
                finally:
                    gate.leave(began)
        except INFRASTRUCTURE as exc:
            raise send_again(task, message, exc) from exc
        # the node is done and recorded: its kept successor runs next (executor/eager.py)
        eager.follow(task, node.spec, node.kept, node.kept_begun)
    return result


def _parsed(fields: Any) -> NodeMessage | None:
    """A message's node fields for the receivers below; None for a plain message, and for
    a malformed one (run_node rejected it and said why)."""
    if not fields:
        return None
    try:
        return NodeMessage.parse(fields)
    except MalformedMessage:
        return None


def _node_failed(
    sender: Any = None,
    task_id: Any = None,
    exception: Any = None,
    kwargs: Any = None,
    einfo: Any = None,
    **_: Any,
) -> None:
    """A node's task failed after its retries (any task: ``@task`` or existing)."""
    message = _parsed(graph_fields(kwargs))
    if message is None or sender is None:
        return
    traceback = einfo.traceback if einfo else ""
    error = exception_record(message.node_id, exception, traceback)
    if not adopted(sender) and isinstance(exception, TypeError) and GRAPH_KWARG in str(exception):
        error = error_record(
            message.node_id,
            UnknownTask.__name__,
            UnknownTask.__module__,
            f"node {message.node_id!r}: task {sender.name!r} was registered after the worker "
            f"on {socket.gethostname()} started, so it cannot run node messages; import its "
            "module when the worker starts (the app's imports/include, or its -A module)",
        )
    store_failure(sender.app, message, exception, traceback, sender.request)
    try:
        fail_node(
            sender.app, message, error, traceback, getattr(sender.request, "graph_attempt", None)
        )
    except StoreUnavailable as down:
        # the failure cannot be recorded now: it travels in a message sent again
        send_again(sender, message, down, failure=error)
    except Exception:  # the task failure itself is already reported by Celery
        logger.exception("celery-graph: could not record the failure of %s", message.task_id)


def _node_retried(
    sender: Any = None, request: Any = None, reason: Any = None, einfo: Any = None, **_: Any
) -> None:
    """A node will run again (its own retry, or sent again after an infrastructure
    error): keep this attempt in its history, and lease it for that long, so the
    reconciler does not send it a second time."""
    message = _parsed(graph_fields(getattr(request, "kwargs", None)))
    if message is None or sender is None:
        return
    cause = getattr(reason, "exc", None) or reason
    try:
        state_for(sender.app).scripts.attempt(
            message.run_id,
            message.result_field,
            "retried",
            exception_record(message.node_id, cause) if isinstance(cause, BaseException) else "",
            einfo.traceback if einfo else "",
            getattr(request, "graph_attempt", None),
        )
    except CeleryGraphError as err:  # the history misses one attempt; the node goes on
        logger.warning("celery-graph: could not keep the attempt of %s: %s", message.task_id, err)
    when = getattr(reason, "when", None)
    if isinstance(when, datetime.datetime):
        now = datetime.datetime.now(tz=when.tzinfo)
        when = (when - now).total_seconds()
    attempt = getattr(request, "graph_attempt", 0)
    try:
        state = state_for(sender.app)
        state.scripts.lease(
            message.run_id,
            Mode.REQUEUE,
            float(when or 0) + state.settings.queued_lease,
            [message.result_field],
            attempt,
        )
    except CeleryGraphError as err:  # the lease runs out: a duplicate, not a loss
        logger.warning("celery-graph: could not lease the retry of %s: %s", message.task_id, err)


def _node_revoked(
    sender: Any = None,
    request: Any = None,
    terminated: Any = False,
    signum: Any = None,
    expired: Any = False,
    **_: Any,
) -> None:
    """A worker discarded a node message because its task id was revoked through Celery
    (or killed it, with ``terminate=True``): cancel the run, naming the node. Celery's
    workers discard every later message with that id, so the run could never finish.
    An expired message (``expires``) is left to the reconciler, which sends it again."""
    if expired or sender is None or graph_fields(getattr(request, "kwargs", None)) is None:
        return
    task_id = getattr(request, "id", None)
    if not task_id:
        return
    try:
        message_revoked(
            sender.app,
            state_for(sender.app),
            task_id,
            terminated=bool(terminated),
            signum=signum,
            request=request,
        )
    except Exception:
        logger.exception("celery-graph: could not cancel the run of revoked node %s", task_id)


def _call_outside_a_graph(self: Task, *args: Any, **kwargs: Any) -> Any:
    raise TypeError("celery_graph.call runs existing tasks as graph nodes only; see node()")


_call_outside_a_graph.__name__ = "call"


def register_call_task(app: Any) -> None:
    """Register ``celery_graph.call`` on ``app``: graphs stored before existing tasks ran
    under their own names send their nodes to this task, which calls the existing task in
    the worker; kept so those runs still finish."""
    app.task(name=CALL_TASK, bind=True, base=GraphTask, shared=False)(_call_outside_a_graph)


def _wait_outside_a_graph(self: Task, *args: Any, **kwargs: Any) -> Any:
    raise TypeError("celery_graph.wait carries the wait_for() nodes of graphs only")


_wait_outside_a_graph.__name__ = "wait"


def register_wait_task(app: Any) -> None:
    """Register ``celery_graph.wait`` on ``app``: the task name of wait_for() nodes,
    whose messages call nothing (NodeRun.wait)."""
    app.task(name=WAIT_TASK, bind=True, base=GraphTask, shared=False)(_wait_outside_a_graph)


def _unknown_task(sender=None, message=None, exc=None, name=None, id=None, **kw):
    """A worker got a node whose task it does not know (a graph submitted by newer code,
    or a worker missing a module): Celery drops such messages, so fail the run loudly
    rather than let it wait forever."""
    try:
        body = message.decode() if message is not None else None
        kwargs = body[1] if isinstance(body, (list, tuple)) and len(body) > 1 else {}
        parsed = _parsed(graph_fields(kwargs))
        if parsed is None:
            return
        error = error_record(
            parsed.node_id,
            UnknownTask.__name__,
            UnknownTask.__module__,
            f"node {parsed.node_id!r}: task {name!r} is not registered on the worker on "
            f"{socket.gethostname()}; deploy the module that defines it to every worker "
            "consuming this queue",
        )
        fail_node(current_app._get_current_object(), parsed, error)
    except Exception:
        logger.exception("celery-graph: could not fail the run of unknown task %s", name)


def connect_signals() -> None:
    """Connect the receivers of node messages' failures, retries, revokes and unknown tasks
    (idempotent). Each returns at once for a message that is not a node's."""
    task_failure.connect(_node_failed, weak=False, dispatch_uid="celery_graph.node_failed")
    task_retry.connect(_node_retried, weak=False, dispatch_uid="celery_graph.node_retried")
    task_unknown.connect(_unknown_task, weak=False, dispatch_uid="celery_graph.unknown_task")
    task_revoked.connect(_node_revoked, weak=False, dispatch_uid="celery_graph.node_revoked")
