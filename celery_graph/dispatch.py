"""The only code that sends to the broker: node messages, map items, the continuation of a
Celery canvas, and the queue-depth reads that backpressure and metrics use.

Every node message is an ordinary Celery message of the node's own task name, so routes,
Flower and ``celery inspect`` see it like any task (see ``protocol.py`` for its fields).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import signature
from celery.app.task import Context
from kombu.exceptions import OperationalError

from .errors import Backpressure, BrokerUnavailable
from .model import GraphSpec, NodeSpec, Outcome
from .protocol import GRAPH_KWARG, NodeMessage

# What sending raises when the broker cannot be reached (Celery re-raises the transport's
# connection errors as kombu's OperationalError).
BROKER_DOWN = (OperationalError, ConnectionError, OSError)


@contextmanager
def _sending(what: str) -> Iterator[None]:
    try:
        yield
    except BROKER_DOWN as exc:
        raise BrokerUnavailable(f"the broker did not take {what}: {exc}") from exc


def publish_nodes(
    app: Any,
    spec: GraphSpec,
    run_id: str,
    node_ids: Iterable[str],
    *,
    delays: bool = True,
    epoch: int = 0,
    ahead: bool = False,
) -> None:
    """Send one message per node, with the node's bound arguments and routing options
    (``delays=False``: without the nodes' start delays, which have passed already;
    ``epoch``: the run's, how many times it was resumed, in the task ids; ``ahead``:
    sent while the call that releases the nodes is on its way, NodeMessage.ahead)."""
    with _sending("node messages"), _producer(app) as producer:
        for nid in node_ids:
            node = spec.nodes[nid]
            message = NodeMessage(spec.graph_id, run_id, nid, node.call, epoch=epoch, ahead=ahead)
            countdown = (node.delay or None) if delays else None
            _send(app, producer, node, message, dict(node.kwargs), countdown=countdown)


def publish_items(
    app: Any,
    node: NodeSpec,
    message: NodeMessage,
    items: list[Any],
    units: Iterable[int] | None = None,
) -> None:
    """Send the messages of a dynamic fan-out (``node.map``): one per item, or one per
    ``node.map_chunk`` items; all of them, or only the ones numbered in ``units``."""
    assert node.map_param is not None
    count = node.units(len(items))
    size = node.map_chunk
    with _sending("map items"), _producer(app) as producer:
        for i in range(count) if units is None else units:
            kwargs = dict(node.kwargs)
            kwargs[node.map_param] = items[i * size : (i + 1) * size] if size else items[i]
            _send(app, producer, node, message.item(i, count, size), kwargs)


@contextmanager
def _producer(app: Any) -> Iterator[Any]:
    """A producer of the app's pool (Celery's ``producer_or_acquire``), as
    :class:`KnownQueues` to the Celery code that sends through it."""
    with app.producer_or_acquire() as producer:
        yield KnownQueues(producer)


class KnownQueues:
    """A kombu producer whose ``publish`` leaves out of ``declare`` what its connection
    declared already, which kombu would skip as well, but only after binding a copy of
    each entity and wrapping the check in its retry: about 35 of the 200 µs sending a
    node message took here (Celery asks for the queue's declaration with every
    message). What kombu has not declared on this connection, or does not remember
    (``can_cache_declaration``), or after a reconnection (kombu forgets them all), is
    left in and declared as before. Everything else is the producer's own."""

    __slots__ = ("_producer",)

    def __init__(self, producer: Any) -> None:
        self._producer = producer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    def publish(self, body: Any, *args: Any, declare: Any = None, **kwargs: Any) -> Any:
        if declare:
            declare = undeclared(self._producer, declare)
        return self._producer.publish(body, *args, declare=declare, **kwargs)


def undeclared(producer: Any, entities: list[Any]) -> list[Any]:
    """``entities`` less those kombu's declaration cache holds for ``producer``'s
    connection (kombu's own test in ``maybe_declare``: a cacheable entity whose hash the
    connection's ``declared_entities`` holds); all of them when the channel has no
    connection (closed: kombu reconnects and declares) or the cache is empty."""
    if getattr(producer.channel, "connection", None) is None:
        return entities
    # the kombu Connection of that channel (a producer of a pool is made from it)
    known = producer.connection.declared_entities
    if not known:
        return entities
    return [
        e for e in entities if not (getattr(e, "can_cache_declaration", False) and hash(e) in known)
    ]


def redeliver(task: Any, fields: dict[str, Any], countdown: float) -> None:
    """Send the message ``task`` is running again, after ``countdown`` seconds, with new
    ``_graph`` fields; the attempt counter is left as it is (an infrastructure error is
    not one of the node's retries)."""
    request = task.request
    kwargs = dict(request.kwargs or {})
    kwargs[GRAPH_KWARG] = fields
    with _sending("the message sent again"):
        task.signature_from_request(
            request, request.args, kwargs, countdown=countdown, retries=request.retries
        ).apply_async()


def send_woken(app: Any, message: dict[str, Any], countdown: float | None = None) -> None:
    """Send again a node message that waited for a slot of its task's fleet-wide limit
    (the message as ``executor/gate.py`` kept it: task name, id, arguments, queue), or
    that waits ``countdown`` seconds for its task's rate."""
    with _sending("a message woken by a free slot"):
        app.send_task(
            message["task"],
            args=message.get("args") or (),
            kwargs=message.get("kwargs") or {},
            task_id=message["id"],
            queue=message.get("queue") or None,
            priority=message.get("priority"),
            ignore_result=True,
            countdown=countdown,
        )


def revoke(app: Any, task_ids: list[str], *, terminate: bool = False, signal: str = "") -> None:
    """Celery's own revoke of ``task_ids`` on every worker (``terminate``: the pool
    processes running them get ``signal``, SIGTERM by default), as Flower's buttons and
    ``celery control revoke`` send it."""
    if not task_ids:
        return
    with _sending("the revoke"):
        app.control.revoke(task_ids, terminate=terminate, signal=signal or "SIGTERM")


def queue_of(app: Any, node: NodeSpec) -> str:
    """The queue the node's messages go to (its options, else the app's routes). The
    routes are asked once per task name and router: they are given the name alone (no
    arguments), and Celery's router keeps the routes it was made with, as here."""
    queue = node.options.get("queue")
    if queue:
        return str(queue)
    router = app.amqp.router
    known = _routed.get(router)
    if known is None:
        known = _routed[router] = {}
    if node.task not in known:
        route = router.route({}, node.task).get("queue")
        known[node.task] = str(getattr(route, "name", route) or "")
    return known[node.task] or str(app.conf.task_default_queue)


# router -> task name -> its route's queue, or "" (queue_of)
_routed: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()


def _send(
    app: Any,
    producer: Any,
    node: NodeSpec,
    message: NodeMessage,
    kwargs: dict[str, Any],
    countdown: float | None = None,
) -> None:
    kwargs[GRAPH_KWARG] = message.fields()
    app.send_task(
        node.task,
        kwargs=kwargs,
        task_id=message.task_id,
        producer=producer,
        ignore_result=True,
        countdown=countdown,
        **{**shown(app, kwargs), **node.options},
    )


def shown(app: Any, kwargs: dict[str, Any]) -> dict[str, str]:
    """The ``argsrepr`` and ``kwargsrepr`` Celery writes into a message for Flower and
    ``celery inspect`` (its ``saferepr``), written here for a node message whose keyword
    arguments are plain (text, numbers, True/False/None, and the ``_graph`` fields): the
    same text, without the general walk that was about a tenth of the time sending a
    node's message took (30 of 370 µs here). Celery copies options it is given into the
    message's properties as well: on Redis, a message is that much longer. Empty, and
    Celery writes them, for anything else (a list, an object, a text past the length
    Celery cuts at, ``task_repr_maxlevels`` under 2)."""
    amqp = app.amqp
    limit = min(amqp.argsrepr_maxsize, amqp.kwargsrepr_maxsize)
    levels = _repr_levels(app.conf)
    if levels is not None and levels < 2:
        return {}
    text = _plain_dict(kwargs, 2, limit)
    if text is None:  # not plain, or Celery would cut it: its own saferepr
        return {}
    return {"argsrepr": "()", "kwargsrepr": text}


def _repr_levels(conf: Any) -> int | None:
    """``task_repr_maxlevels`` (Celery 5.5 on; before it saferepr's default, 3); None or 0
    for no limit."""
    try:
        return conf.task_repr_maxlevels or None
    except (AttributeError, KeyError):
        return 3


def _plain_dict(value: dict[str, Any], depth: int, limit: int) -> str | None:
    """``value`` as Celery's saferepr writes it when that is under ``limit`` characters
    and its keys are texts and its values plain (a dict of them ``depth`` - 1 levels
    down); else None, as soon as it is known (a long text is not copied to find out)."""
    parts = []
    size = 2  # the braces
    for key, item in value.items():
        if type(key) is not str:
            return None
        nested = type(item) is dict and depth > 1
        text = _plain_dict(item, depth - 1, limit - size) if nested else _plain(item, limit)
        if text is None:
            return None
        part = f"'{_quoted(key)}': {text}"
        size += len(part) + 2  # and ", "
        if size >= limit:
            return None
        parts.append(part)
    return "{" + ", ".join(parts) + "}"


def _quoted(text: str) -> str:
    return text.replace("'", "\\'")


def _plain(value: Any, limit: int) -> str | None:
    """saferepr's text of a plain value: a text in single quotes with its own single
    quotes escaped and nothing else, a number as ``str``, None as ``repr``; None for
    anything else, and for a text of ``limit`` characters or more."""
    kind = type(value)
    if kind is str:
        return f"'{_quoted(value)}'" if len(value) < limit else None
    if kind is int and value.bit_length() > 3 * limit:  # over limit digits: not written
        return None
    if kind is int or kind is bool or kind is float:
        return str(value)
    if value is None:
        return "None"
    return None


def send_plain(task: Any, args: Any, kwargs: Any, options: dict[str, Any]) -> Any:
    """Send ``task`` on its own, outside any graph: Celery's ``Task.apply_async``, as a
    ``@task`` node's ``delay`` / ``apply_async`` do; its ``AsyncResult``."""
    return task.apply_async(args, kwargs, **options)


# -- a graph inside a Celery canvas ----------------------------------------------------


def continue_canvas(app: Any, request: dict[str, Any], outcome: Outcome) -> None:
    """The run started by the canvas step ``request`` ended: store its result (or failure)
    under the step's task id and send what Celery would have sent after the step."""
    step = Context(request)  # the canvas step's Celery request, as the backend wants it
    step.ignore_result = False
    backend = app.backend
    stores = type(backend).__name__ != "DisabledBackend"
    if outcome.state != "succeeded":
        if stores:
            exc = outcome.exception()
            backend.mark_as_failure(request["id"], exc, getattr(exc, "traceback", None), step)
        return
    result = outcome.value
    if stores:
        backend.mark_as_done(request["id"], result, step)
    for callback in request.get("callbacks") or ():
        signature(callback, app=app).apply_async(
            (result,), parent_id=request["id"], root_id=request.get("root_id")
        )
    chain = request.get("chain") or []
    if chain:
        signature(chain[-1], app=app).apply_async(
            (result,),
            chain=chain[:-1] or None,
            parent_id=request["id"],
            root_id=request.get("root_id"),
        )


# -- queue depth and backpressure ------------------------------------------------------


class QueueDepth:
    """Messages waiting in broker queues, read with a passive queue declare over one kept
    connection: on Redis, kombu counts every priority list of the queue; on RabbitMQ the
    broker answers. A queue that does not exist yet holds nothing."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._conn: Any = None

    def depth(self, queue: str) -> int:
        if self._conn is None:
            self._conn = self.app.connection_for_read()
        conn = self._conn
        try:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
        except conn.channel_errors:
            # the queue does not exist (on AMQP the 404 closes the channel)
            self.close()
            return 0
        except (*BROKER_DOWN, *conn.connection_errors) as exc:
            # broker unreachable: report no number rather than a misleading zero
            self.close()
            raise BrokerUnavailable(
                f"the broker did not answer for the depth of queue {queue!r}: {exc}"
            ) from exc

    def depths(self, queues: Iterable[str]) -> dict[str, int]:
        return {q: self.depth(q) for q in queues}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.release()
            self._conn = None


def wait_for_room(
    app: Any,
    queues: list[str],
    limit: int,
    timeout: float,
    unless: Callable[[], bool] = lambda: False,
) -> None:
    """Wait, up to ``timeout`` seconds, until every queue holds fewer than ``limit``
    messages (or ``unless()`` is true), instead of flooding the broker; raise Backpressure
    after that."""
    depth = QueueDepth(app)
    deadline = time.monotonic() + timeout
    pause = 0.05
    try:
        while True:
            full = {q: d for q, d in depth.depths(queues).items() if d >= limit}
            if not full or unless():
                return
            if time.monotonic() >= deadline:
                detail = ", ".join(f"{q!r} holds {d}" for q, d in full.items())
                raise Backpressure(
                    f"broker queue too deep for {timeout:g} s: {detail} "
                    f"(graph_max_queue_depth={limit}); add workers or retry later"
                )
            # No broker signal tells when a queue drains, so this waits in growing steps.
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
    finally:
        depth.close()
