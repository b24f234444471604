"""Node results where Celery users look for them: the app's result backend.

Node messages are sent with ``ignore_result=True`` (the graph Redis holds every result);
when the app has a result backend and ``graph_store_node_results`` is on (the default),
each node's outcome is also written there under the node's task id, ``<run id>:<node>``
(and under the id of the message that ran it, ``...~<epoch>``, after a resume), so
``app.AsyncResult(task_id)``, django-celery-results and anything else reading the backend
see SUCCESS with the node's result, FAILURE with its exception, or REVOKED. A map's items
and chunks are not written one by one: the map node is, with the list of its results.
Failures the engine decides without a task raising (a ``wait_for`` timeout, a failed child
run, a node that lost its worker too often) are written from their error records. On a
key-value backend (Redis...) a SUCCESS is written without the read of the task's state
that Celery's ``store_result`` makes first (``_succeeded``): one round trip less a step.
When that backend is Celery's Redis backend on the graph Redis's own server and database
(one Redis for everything, as many deployments have it), the write goes in the round trip
of the call that completes the node (``success_writes``): the same SET and PUBLISH Celery
makes, without a round trip of its own.

A backend that cannot be reached never fails a node: the write is logged and skipped.
"""

from __future__ import annotations

import builtins
import importlib
import json
import logging
import weakref
from typing import Any

from celery import states
from celery.backends.base import BaseKeyValueStoreBackend

from ..config import Settings
from ..protocol import NodeMessage, NodeTaskId, task_id_for
from ..state import State
from ..state.scripts import Piggyback

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
        lambda b, tid: _succeeded(b, tid, value, request),
    )


def success_writes(
    app: Any, message: NodeMessage, value: Any, request: Any, state: State
) -> Piggyback | None:
    """The writes of :func:`store_success`, as commands for the graph call that completes
    the node to send first (``Scripts.complete``, ``complete_begin``), when the app's
    result backend is Celery's Redis backend on ``state``'s server and database; None
    otherwise (``store_success`` then writes it). What is sent is what Celery's
    ``RedisBackend.set`` sends: SETEX (SET without ``result_expires``) and PUBLISH of the
    encoded meta under the backend's key for the task id, so ``AsyncResult.get()``
    subscribers hear it as they would."""
    backend = backend_of(app)
    if backend is None or not _shares_server(backend, state):
        return None
    commands: list[tuple[Any, ...]] = []
    task_ids = _ids(message.run_id, message.node_id, message.epoch)
    try:
        result = backend.encode_result(value, states.SUCCESS)
        for task_id in task_ids:
            key, data = _success_entry(backend, task_id, result, request)
            expires = backend.expires
            commands.append(("SETEX", key, expires, data) if expires else ("SET", key, data))
            commands.append(("PUBLISH", key, data))
    except Exception as exc:  # store_success says what went wrong, or retries
        logger.debug("celery-graph: SUCCESS of %s through store_success: %s", task_ids, exc)
        return None

    def failed(exc: Exception) -> None:
        logger.warning(
            "celery-graph: could not store the result of %s in the result backend: %s",
            task_ids[0],
            exc,
        )

    return Piggyback(commands, failed)


# backend -> (graph state, whether they are one server and database)
_shared: weakref.WeakKeyDictionary[Any, tuple[State, bool]] = weakref.WeakKeyDictionary()


def _shares_server(backend: Any, state: State) -> bool:
    known = _shared.get(backend)
    if known is None or known[0] is not state:
        known = (state, _same_server(backend, state))
        _shared[backend] = known
    return known[1]


def _same_server(backend: Any, state: State) -> bool:
    """Is ``backend`` Celery's own Redis backend (not a subclass: its writes are what
    :func:`success_writes` sends) on ``state``'s server and database?"""
    kind = type(backend)
    if (kind.__module__, kind.__name__) != ("celery.backends.redis", "RedisBackend"):
        return False
    params = getattr(backend, "connparams", None)
    return isinstance(params, dict) and state.same_server(params)


def _succeeded(backend: Any, task_id: str, value: Any, request: Any) -> None:
    """Write SUCCESS with ``value`` under ``task_id``.

    Celery's ``store_result`` on a key-value backend (Redis, memcached...) reads the task's
    state before it writes, only so as not to write over a SUCCESS: a round trip to the
    backend in every step. A node's result is the same whenever it is written (the graph
    state stores it once, and a copy of the message writes the stored one), so writing
    SUCCESS over a SUCCESS changes nothing but its date, and over any other state Celery
    writes it as well: on such a backend the write is made as ``store_result`` makes it,
    without the read. Any other backend, or one without those methods, goes through
    ``store_result``, and so does a write that fails (it retries as Celery is set to)."""
    if isinstance(backend, BaseKeyValueStoreBackend):
        try:
            result = backend.encode_result(value, states.SUCCESS)
            key, data = _success_entry(backend, task_id, result, request)
            backend._set_with_state(key, data, states.SUCCESS)
            return
        except Exception as exc:  # store_result says what went wrong, or retries
            logger.debug("celery-graph: SUCCESS of %s through store_result: %s", task_id, exc)
    backend.store_result(task_id, value, states.SUCCESS, request=request)


def _success_entry(backend: Any, task_id: str, result: Any, request: Any) -> tuple[Any, Any]:
    """The key and the encoded meta of a SUCCESS with ``result`` (already encoded by the
    backend) under ``task_id``, as a key-value backend's ``store_result`` writes them."""
    meta = backend._get_result_meta(result, states.SUCCESS, None, request)
    meta["task_id"] = task_id
    return backend.get_key_for_task(task_id), backend.encode(meta)


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


def store_failed_record(app: Any, run_id: str, node_id: str, error: str, epoch: int = 0) -> None:
    """Node ``node_id`` failed for a reason its error record ``error`` gives (codec's
    ``error_record``), decided by the engine, not raised by its task."""
    record = json.loads(error)
    exc, traceback = _exception(record), str(record.get("traceback") or "")
    _store(
        app,
        _ids(run_id, node_id, epoch),
        "the failure",
        lambda b, tid: b.store_result(tid, exc, states.FAILURE, traceback),
    )


def _exception(record: dict[str, Any]) -> BaseException:
    """The exception an error record names, rebuilt with its message: its own class when
    it imports and takes a message (builtins, celery_graph's, the user's), else an
    Exception subclass of the same name and module, which the backend stores alike."""
    name, module, message = (
        record.get("type", "Error"),
        record.get("module", ""),
        record.get("message", ""),
    )
    try:
        found = getattr(builtins if module == "builtins" else importlib.import_module(module), name)
        if isinstance(found, type) and issubclass(found, BaseException):
            return found(message)
    except Exception:  # not importable here, or not built from a message
        pass
    return type(name, (Exception,), {"__module__": module or __name__})(message)


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
