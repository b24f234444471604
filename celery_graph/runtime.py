"""The worker side and the submit side of a run.

Worker, per node message: load the spec (LRU) -> begin.lua (run still running? result
already stored? read inputs and upstream results) -> call the function unless its result
is already stored -> complete.lua (store once, barrier arrivals, claim released successors,
end the run at the last sink) -> publish the claimed successors -> mark.lua.
"""

from __future__ import annotations

import json as stdjson
import socket
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import redis
from celery import Task, current_app, shared_task
from celery.exceptions import Retry
from celery.signals import task_unknown
from celery.utils.log import get_task_logger
from kombu.utils import json as kjson

from .barrier import Barrier
from .config import Settings
from .dsl import CALL_TASK, Branch
from .errors import (
    DeadlineExceeded,
    ResultTooLarge,
    SerializationError,
    StoreError,
    UnknownTask,
)
from .spec import GraphSpec, NodeSpec, policy_violation
from .store import GraphStore, RunStore

logger = get_task_logger("celery_graph")

GRAPH_KWARG = "_graph"  # the one extra keyword in a node's message: {"g", "r", "n"}


class Engine:
    """Redis clients, store and barrier for one app and one set of settings."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.keys = settings.keys
        self.client = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=30,
            socket_connect_timeout=10,
            health_check_interval=30,
        )
        self.store = GraphStore(self.client, self.keys, settings.store_ttl, settings.cache_size)
        self.runs = RunStore(self.client, self.keys, settings.run_ttl)
        self.barrier = Barrier(
            self.client, self.keys, settings.run_ttl, settings.result_ttl, settings.release_grace
        )
        self._wait_client: redis.Redis | None = None

    # Waiting for completion blocks up to WAIT_SLICE seconds per call; the socket timeout
    # of the waiting connection is longer, so redis-py never cuts a wait short.
    WAIT_SLICE = 5.0

    @property
    def wait_client(self) -> redis.Redis:
        if self._wait_client is None:
            self._wait_client = redis.Redis.from_url(
                self.settings.redis_url,
                socket_timeout=self.WAIT_SLICE + 10,
                socket_connect_timeout=10,
            )
        return self._wait_client


_engines: weakref.WeakKeyDictionary[Any, dict[Settings, Engine]] = weakref.WeakKeyDictionary()
_engines_lock = threading.Lock()


def engine_for(app: Any = None) -> Engine:
    app = app or current_app._get_current_object()
    settings = Settings.from_app(app)
    with _engines_lock:
        per_app = _engines.setdefault(app, {})
        engine = per_app.get(settings)
        if engine is None:
            engine = per_app[settings] = Engine(app, settings)
        return engine


# -- encoding -------------------------------------------------------------------------


def encode_value(value: Any, what: Callable[[], str]) -> str:
    try:
        return kjson.dumps(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(
            f"{what()}: a value of type {type(value).__name__} cannot be encoded as JSON "
            "(return plain data: dict, list, str, numbers, bool, None, datetime, Decimal, UUID)"
        ) from exc


def decode_value(raw: bytes | str) -> Any:
    return kjson.loads(raw)


# -- the Celery task ------------------------------------------------------------------


class GraphTask(Task):
    """Base class of every celery-graph task. A message without ``_graph`` runs the
    function as a plain Celery task; with it, the function runs as a node of a run."""

    typing = False  # graph messages carry the extra ``_graph`` keyword

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        ctx = kwargs.get(GRAPH_KWARG) if isinstance(kwargs, dict) else None
        if ctx:
            try:
                fail_node(self.app, ctx, exc, einfo.traceback if einfo else "")
            except Exception:  # the task failure itself is already reported by Celery
                logger.exception("celery-graph: could not record the failure of %s", ctx)
        return super().on_failure(exc, task_id, args, kwargs, einfo)


def make_task_body(fn: Callable[..., Any]) -> Callable[..., Any]:
    def body(self: Task, *args: Any, **kwargs: Any) -> Any:
        ctx = kwargs.get(GRAPH_KWARG)
        if ctx is None:
            return fn(*args, **kwargs)
        bound = {k: v for k, v in kwargs.items() if k != GRAPH_KWARG}
        return execute_node(self, fn, ctx, bound)

    body.__name__ = fn.__name__
    body.__qualname__ = fn.__qualname__
    body.__module__ = fn.__module__
    body.__doc__ = fn.__doc__
    body.__wrapped__ = fn  # type: ignore[attr-defined]
    return body


def execute_node(task: Task, fn: Callable[..., Any], ctx: dict[str, Any], bound: dict) -> Any:
    engine = engine_for(task.app)
    run_id, node_id = ctx["r"], ctx["n"]
    spec = engine.store.load(ctx["g"])
    node = spec.nodes[node_id]
    index = ctx.get("i")  # set on the element messages of a dynamic fan-out
    field = None if index is None else f"{node_id}#{index}"
    ids = node.upstream_ids() if index is None else node.pull_ids()
    hostname = task.request.hostname or socket.gethostname()
    status, inputs_raw, own, upstream = engine.barrier.begin(run_id, node, hostname, field, ids)
    if status == "deadline":
        raise DeadlineExceeded(f"run {run_id} passed its deadline before node {node_id!r} started")
    if status != "running":
        logger.info("celery-graph: run %s is %s; node %s not run", run_id, status, node_id)
        return None
    if node.map_source and index is None and own is None:
        return expand_map(task, engine, spec, ctx, node, bound, dict(zip(ids, upstream)))
    choice = ""
    if own is not None:
        # Redelivered after the result was stored: never call the function again, but
        # finish the dispatch a crash may have interrupted (a branch choice is stored too).
        result_json: bytes | str = own
        result = decode_value(own)
    else:
        missing = [i for i, raw in zip(ids, upstream) if raw is None]
        states = engine.barrier.node_states(run_id, missing) if missing else {}
        kwargs = gather_kwargs(node, inputs_raw, bound, upstream, spec, ids, states)
        if node.call:
            fn = task.app.tasks.get(node.call)
            if fn is None:
                raise UnknownTask(
                    f"node {node_id!r}: existing task {node.call!r} is not registered on the "
                    f"worker on {hostname}; import its module in every worker"
                )
        try:
            if node.context:
                from .context import RunContext

                result = fn(RunContext(engine, run_id, node_id), **kwargs)
            else:
                result = fn(**kwargs)
        except Exception as exc:
            if node.retries and not isinstance(exc, Retry) and task.request.retries < node.retries:
                raise task.retry(exc=exc, countdown=node.retry_delay,
                                 max_retries=node.retries) from exc
            raise
        if isinstance(result, Branch):
            choice = branch_choice(node, result)
            result = result.value
        what = f"node {node_id!r}" + ("" if index is None else f" item {index}")
        result_json = encode_value(result, lambda: f"{what}: result")
        limit = engine.settings.max_result_bytes
        if len(result_json) > limit:
            raise ResultTooLarge(
                f"{what}: result is {len(result_json)} bytes encoded, over "
                f"graph_max_result_bytes={limit}; store large data elsewhere and return a "
                "reference"
            )
    if index is not None:
        _stored, arrived = engine.barrier.map_arrive(run_id, node_id, index, result_json)
        if arrived < ctx["c"]:
            return result
        # every element is in: this arrival completes the map node (idempotent)
        result_json = engine.barrier.map_results(run_id, node_id, ctx["c"])
    complete_and_dispatch(task, engine, spec, ctx, node, result_json, choice)
    return result


def branch_choice(node: NodeSpec, chosen: Branch) -> str:
    unknown = [t for t in chosen.targets if t not in node.succs]
    if unknown:
        raise ValueError(
            f"node {node.id!r} chose {unknown} with branch(), which are not its successors "
            f"(successors: {', '.join(node.succs) or 'none'})"
        )
    return "!" + ",".join(chosen.targets)


def complete_and_dispatch(
    task: Task, engine: Engine, spec: GraphSpec, ctx: dict[str, Any], node: NodeSpec,
    result_json: bytes | str, choice: str = "",
) -> None:
    run_id = ctx["r"]
    arrival = engine.barrier.complete(spec, run_id, node, result_json, branch=choice)
    finished = arrival.finished
    deferred = list(arrival.deferred)
    claimed = list(arrival.publish)
    # Pass skips on: a skipped node arrives as a skip at its own successors, which may in
    # turn be skipped, or released when another branch reached them for real.
    to_skip = list(arrival.skipped)
    while to_skip:
        skipped = spec.nodes[to_skip.pop()]
        more = engine.barrier.complete(spec, run_id, skipped, "", kind="skipped")
        finished = finished or more.finished
        claimed += more.publish
        deferred += more.deferred
        to_skip += more.skipped
    if claimed:
        publish(task.app, spec, ctx["g"], run_id, claimed)
        engine.barrier.mark_published(run_id, claimed)
    if finished:
        run_ended(task.app, run_id)
    if deferred:
        # Another arrival released these successors moments ago and is publishing them.
        # Come back after the grace period: by then they are marked published (nothing to
        # do), or the releaser died and this message takes the publish over.
        logger.info("celery-graph: node %s of run %s defers %s", node.id, run_id, deferred)
        raise task.retry(countdown=engine.settings.release_grace, max_retries=None)


def expand_map(
    task: Task, engine: Engine, spec: GraphSpec, ctx: dict[str, Any], node: NodeSpec,
    bound: dict[str, Any], upstream: dict[str, bytes | None],
) -> int:
    """The map node became ready: publish one element message per item of the source's
    list (an empty list completes the node with [] at once). Returns the item count."""
    assert node.map_source is not None and node.map_param is not None
    raw = upstream.get(node.map_source)
    items = decode_value(raw) if raw is not None else None
    if not isinstance(items, list):
        raise TypeError(
            f"node {node.id!r}: map({node.map_source!r}) needs a list, but {node.map_source!r} "
            f"returned {type(items).__name__}"
        )
    if not items:
        complete_and_dispatch(task, engine, spec, ctx, node, "[]")
        return 0
    count = len(items)
    with task.app.producer_or_acquire() as producer:
        for i, item in enumerate(items):
            kwargs = dict(bound)
            kwargs[node.map_param] = item
            kwargs[GRAPH_KWARG] = {**ctx, "i": i, "c": count}
            task.app.send_task(
                node.task,
                kwargs=kwargs,
                task_id=f"{task_id_for(ctx['r'], node.id)}#{i}",
                producer=producer,
                ignore_result=True,
                **node.options,
            )
    return count


def gather_kwargs(
    node: NodeSpec,
    inputs_raw: bytes | None,
    bound: dict[str, Any],
    upstream: list,
    spec: GraphSpec | None = None,
    ids: list[str] | None = None,
    states: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """Defaults < run inputs < bound kwargs < upstream results."""
    kwargs: dict[str, Any] = {}
    if inputs_raw and node.params:
        inputs = decode_value(inputs_raw)
        for p in node.params:
            if p in inputs:
                kwargs[p] = inputs[p]
    kwargs.update(bound)
    if node.pull or node.groups:
        ids = node.upstream_ids() if ids is None else ids
        results = {}
        for nid, raw in zip(ids, upstream):
            if raw is None and (states or {}).get(nid) in ("skipped", "failed"):
                raw = b"null"  # skipped by a branch, or failed under its group's policy
            if raw is None:
                raise StoreError(
                    f"node {node.id!r}: the result of upstream node {nid!r} is missing "
                    "(expired or deleted run state)"
                )
            results[nid] = raw
        decoded: dict[str, Any] = {}

        def value(nid: str) -> Any:
            if nid not in decoded:
                decoded[nid] = decode_value(results[nid])
            return decoded[nid]

        def tree(t: Any) -> Any:
            return value(t) if isinstance(t, str) else [tree(x) for x in t]

        for p, src in node.pull.items():
            kwargs[p] = value(src)
        for p, t in node.groups.items():
            kwargs[p] = tree(t)
    return kwargs


def error_json(node_id: str, exc_type: str, module: str, message: str, traceback: str) -> str:
    return stdjson.dumps(
        {"node": node_id, "type": exc_type, "module": module, "message": message,
         "traceback": traceback or ""}
    )


def run_ended(app: Any, run_id: str) -> None:
    """Hooks for a run that just ended: a Celery canvas waiting on it continues."""
    from .canvas import continue_after_run

    try:
        continue_after_run(app, run_id)
    except Exception:
        logger.exception("celery-graph: could not continue the canvas of run %s", run_id)


def fail_node(app: Any, ctx: dict[str, str], exc: BaseException, traceback: str) -> bool:
    """A node failed after its retries: fail the run, unless the node is a member of a group
    whose policy tolerates it; then it arrives at its successors as failed."""
    ended = _fail_node(app, ctx, exc, traceback)
    if ended:
        run_ended(app, ctx["r"])
    return ended


def _fail_node(app: Any, ctx: dict[str, str], exc: BaseException, traceback: str) -> bool:
    engine = engine_for(app)
    run_id, node_id = ctx["r"], ctx["n"]
    error = error_json(node_id, type(exc).__name__, type(exc).__module__, str(exc), traceback)
    try:
        spec = engine.store.load(ctx["g"])
    except StoreError:
        return engine.barrier.finish(None, run_id, "failed", node_id, error)
    node = spec.nodes[node_id]
    if node.tolerant is None or isinstance(exc, DeadlineExceeded):
        return engine.barrier.finish(spec, run_id, "failed", node_id, error)
    arrival = engine.barrier.complete(spec, run_id, node, "", error_json=error, kind="failed")
    claimed = arrival.publish
    policy = spec.policies[node.tolerant]
    states = engine.barrier.node_states(run_id, policy["members"])
    failed = {m for m, state in states.items() if state == "failed"}
    why = policy_violation(policy, failed)
    if why is not None:
        message = (
            f"group {node.tolerant!r} ({policy['kind']} policy): {why}; failed: "
            + ", ".join(sorted(failed))
        )
        group_error = error_json(node_id, "GroupPolicyFailed", "celery_graph.errors", message,
                                 f"last failure, in node {node_id!r}:\n{traceback or exc!r}")
        return engine.barrier.finish(spec, run_id, "failed", node_id, group_error)
    if claimed:
        publish(app, spec, ctx["g"], run_id, claimed)
        engine.barrier.mark_published(run_id, claimed)
    return False


@task_unknown.connect
def _unknown_task(sender=None, message=None, exc=None, name=None, id=None, **kw):
    """A worker got a node whose task it does not know (a graph submitted by newer code,
    or a worker missing a module): Celery drops such messages, so fail the run loudly
    rather than let it wait forever."""
    try:
        body = message.decode() if message is not None else None
        kwargs = body[1] if isinstance(body, (list, tuple)) and len(body) > 1 else {}
        ctx = kwargs.get(GRAPH_KWARG) if isinstance(kwargs, dict) else None
        if not ctx:
            return
        host = socket.gethostname()
        error = UnknownTask(
            f"node {ctx['n']!r}: task {name!r} is not registered on the worker on {host}; "
            "deploy the module that defines it to every worker consuming this queue"
        )
        fail_node(current_app._get_current_object(), ctx, error, "")
    except Exception:
        logger.exception("celery-graph: could not fail the run of unknown task %s", name)


# -- publishing -----------------------------------------------------------------------


def task_id_for(run_id: str, node_id: str) -> str:
    return f"{run_id}:{node_id}"


def publish(app: Any, spec: GraphSpec, graph_id: str, run_id: str, node_ids: Iterable[str]) -> None:
    """Send one ordinary Celery message per node, under the node's own task name."""
    send = app.send_task
    with app.producer_or_acquire() as producer:
        for nid in node_ids:
            node = spec.nodes[nid]
            kwargs = dict(node.kwargs)
            kwargs[GRAPH_KWARG] = {"g": graph_id, "r": run_id, "n": nid}
            if node.call:  # shown in Flower: which existing task this node runs
                kwargs[GRAPH_KWARG]["t"] = node.call
            send(
                node.task,
                kwargs=kwargs,
                task_id=task_id_for(run_id, nid),
                producer=producer,
                ignore_result=True,
                countdown=node.delay or None,
                **node.options,
            )


def _call_outside_a_graph(*args: Any, **kwargs: Any) -> Any:
    raise TypeError("celery_graph.call runs existing tasks as graph nodes only; see node()")


_call_outside_a_graph.__name__ = "call"
# The task every node(existing_task) runs as; registered on every app, like @task.
shared_task(name=CALL_TASK, bind=True, base=GraphTask)(make_task_body(_call_outside_a_graph))
