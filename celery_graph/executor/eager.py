"""Eager successors: a node's only released successor runs next in the same worker
process, without a broker round trip (``graph_eager_successors``, docs/performance.md).

Durability is the published node's. In the usual case one call, complete_begin.lua,
completes the node and leases the successor as running for this worker (what begin.lua
would have done), and the successor's task takes its answer instead of calling begin.lua
(:meth:`Keeper.ahead` makes the checks first, :func:`begun_ahead` hands the answer over);
otherwise complete.lua marks and leases the successor (the queued lease) before anything
runs, exactly as for a message it publishes, and the successor goes through begin.lua. A
process that dies anywhere in between leaves a lease that runs out (running or queued),
and the reconciler sends the node again, as it does for a lost worker or message.

It runs through Celery's own tracer under the node's task id, so ``task_prerun``,
``task_postrun``, ``task_success``, ``task_failure`` and ``task_retry`` fire once per
node, a retry (the node's or the task's own ``self.retry()``) is published as usual, and
a failure goes through the same receivers as a published node's. When the worker sends
task events (``-E``), the task events of the node (``task-received``, ``task-started``,
``task-succeeded``...: what Flower shows) are sent from here, as the worker would for a
message (:class:`_Events`).

Where it is not safe the successor is published as before: more than one node released
at once, a map, a join, a wait_for() node or a step after the run's end, a start delay
or a countdown/eta, a queue this worker does not consume, a task not registered here or
declared ``@task(graph_eager=False)``, a rate limit, a time limit or fleet-wide limits
(none would hold for a run that bypasses the consumer), a revoked task id, a worker
shutting down, a call that is not a worker's (``apply()``, always-eager), and after
``graph_eager_depth`` successors in one message or once they have run for
``graph_eager_seconds``. The message that started a chain is
acknowledged (``acks_late``) when the chain ends: see docs/performance.md for the
visibility timeout.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import threading
import time
from typing import Any

from celery import Task

from ..dispatch import publish_nodes, queue_of
from ..model import GraphSpec, NodeSpec
from ..protocol import ADOPTED, GRAPH_KWARG, NodeMessage
from ..state import Begun, Mode, state_for
from .gate import TaskLimits

logger = logging.getLogger("celery_graph")

OPTION = "graph_eager"  # @task(graph_eager=False): this task's nodes are always published

# options of a node's messages that a run in this process would not honour
_BROKER_ONLY = ("countdown", "eta", "expires")


class _Chain(threading.local):
    """The chain this thread runs: how many successors so far, and the next one."""

    running = False
    ran = 0
    began = 0.0  # time.monotonic() when the first successor began
    next: tuple[GraphSpec, NodeMessage, Begun | None] | None = None
    # what complete_begin.lua answered for the successor about to run: (task id, answer)
    ahead: tuple[str, Begun] | None = None
    events: Any = None  # this thread's event dispatcher (kept: one connection a thread)
    request: dict[str, Any] | None = None  # the request of the successor running now


_chain = _Chain()
_tracers: dict[tuple[int, str], Any] = {}


class Shared:
    """What a worker's main process and its pool processes share about eager successors,
    in memory made by the worker's bootstep before the pool forks (worker/step.py):

    - the worker is stopping (a warm shutdown began): no new successor is kept, as the
      worker's consumer takes no new message (a prefork pool process does not see
      Celery's own flag, which is the main process's);
    - the task ids revoked on the worker (Celery keeps its revoked set in the main
      process; worker/revokes.py copies it here every second): a Bloom filter, so a false
      positive only publishes a successor that could have run here;
    - the eager successors running now, so a cold shutdown hands them back as it hands
      back the messages the worker holds (worker/step.py): a slot per pool process, and
      a dict for the threads of the main process (threads or solo pool).

    Nothing of Celery's is replaced: Celery's ``revoke(terminate=True)`` does not find an
    eager successor (it kills the pool process of a request it received), so a terminate
    only cancels its run (docs/celery-controls.md)."""

    SLOTS = 256
    WIDTH = 256
    PROBES = 8
    BLOOM_BITS = 1 << 16

    def __init__(
        self, tasks: frozenset[str] = frozenset(), queues: frozenset[str] = frozenset()
    ) -> None:
        self.main_pid = os.getpid()
        self.tasks = tasks  # the tasks the worker has (registered when it started)
        self.queues = queues  # the queues it consumes (when it started)
        self._flags = mmap.mmap(-1, 1)
        self._map = mmap.mmap(-1, self.SLOTS * self.WIDTH)
        self._bloom = mmap.mmap(-1, self.BLOOM_BITS // 8)
        self._threads: dict[int, str] = {}  # in the main process: thread ident -> entry
        self.events = False  # the worker sends task events (-E): eager successors too

    # -- stopping ------------------------------------------------------------------------

    def stop(self) -> None:
        self._flags[0] = 1

    def start(self) -> None:
        self._flags[0] = 0

    @property
    def stopping(self) -> bool:
        return self._flags[0] == 1

    # -- revoked ids ---------------------------------------------------------------------

    def _bits(self, task_id: str) -> list[int]:
        digest = hashlib.blake2b(task_id.encode(), digest_size=12).digest()
        return [int.from_bytes(digest[i : i + 4], "little") % self.BLOOM_BITS for i in (0, 4, 8)]

    def revoke(self, task_id: str) -> None:
        """``task_id`` was revoked on this worker (its main process says so)."""
        for bit in self._bits(task_id):
            self._bloom[bit >> 3] |= 1 << (bit & 7)

    def revoked(self, task_id: str) -> bool:
        """``task_id`` may have been revoked on this worker."""
        return all(self._bloom[bit >> 3] & (1 << (bit & 7)) for bit in self._bits(task_id))

    # -- running successors --------------------------------------------------------------

    def _slot(self, at: int) -> bytes:
        return bytes(self._map[at * self.WIDTH : (at + 1) * self.WIDTH]).rstrip(b"\0")

    def enter(self, graph_id: str, task_id: str) -> int | None:
        """This process (thread) runs the eager successor ``task_id`` now; a token for
        :meth:`leave`, None when it could not say so (it is then recovered by its lease)."""
        pid = os.getpid()
        if pid == self.main_pid:
            self._threads[threading.get_ident()] = f"{graph_id} {task_id}"
            return -1
        entry = f"{pid} {graph_id} {task_id}".encode()
        if len(entry) > self.WIDTH:
            return None
        for probe in range(self.PROBES):
            at = (pid + probe) % self.SLOTS
            held = self._slot(at)
            if held:
                holder = int(held.split(b" ", 1)[0])
                if holder != pid and _alive(holder):
                    continue
            self._map[at * self.WIDTH : (at + 1) * self.WIDTH] = entry.ljust(self.WIDTH, b"\0")
            return at
        return None

    def leave(self, token: int | None) -> None:
        if token is None:
            return
        if token < 0:
            self._threads.pop(threading.get_ident(), None)
            return
        self._map[token * self.WIDTH : (token + 1) * self.WIDTH] = bytes(self.WIDTH)

    def _in_pool(self) -> list[tuple[int, str, str]]:
        """(process id, graph id, task id) of every eager successor a live pool process
        of this worker runs now."""
        out = []
        for at in range(self.SLOTS):
            raw = self._slot(at)
            if not raw:
                continue
            pid, graph_id, task_id = raw.decode(errors="replace").split(" ", 2)
            if _alive(int(pid)):
                out.append((int(pid), graph_id, task_id))
        return out

    def pool_holders(self, task_ids: set[str]) -> list[tuple[int, str]]:
        """(process id, task id) of the eager successors among ``task_ids`` that pool
        processes of this worker run now (a thread of the main process cannot be killed)."""
        return [(pid, task_id) for pid, _, task_id in self._in_pool() if task_id in task_ids]

    def running(self) -> list[tuple[str, str]]:
        """(graph id, task id) of every eager successor running in this worker now."""
        threads = [entry.split(" ", 1) for entry in self._threads.values()]
        pool = [(graph_id, task_id) for _, graph_id, task_id in self._in_pool()]
        return [(graph_id, task_id) for graph_id, task_id in threads] + pool


def _alive(pid: int) -> bool:
    """A process ``pid`` exists (one killed mid-successor leaves its slot behind)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


shared: Shared | None = None  # set by the worker's bootstep, before the pool forks


def share(app: Any, events: bool = False) -> Shared:
    """The worker's :class:`Shared` (made once, in the main process, before the fork);
    ``events``: the worker sends task events (``-E``), so eager successors send them too."""
    global shared
    if shared is None or shared.main_pid != os.getpid():
        shared = Shared(frozenset(app.tasks), consumed(app))
    else:  # another worker in this process (tests): its tasks and queues too, and it runs
        shared.tasks = shared.tasks | frozenset(app.tasks)
        shared.queues = shared.queues | consumed(app)
        shared.start()
    shared.events = shared.events or events
    return shared


def _in_a_worker(task: Task) -> bool:
    """The current request is a worker's delivery (or one of its eager successors), not
    ``apply()``, an always-eager call or a direct call."""
    request = task.request
    if request.called_directly or request.is_eager:
        return False
    if not request.delivery_info or not request.hostname:
        return False
    return not any(request.timelimit or ())


def _limited(app: Any, task: Task) -> bool:
    """``task`` has a time or rate limit, or the app gives every task a time limit."""
    conf = app.conf
    return _task_limited(task) or bool(conf.task_time_limit or conf.task_soft_time_limit)


def _task_limited(task: Task) -> bool:
    return bool(task.time_limit or task.soft_time_limit or task.rate_limit)


def consumed(app: Any) -> frozenset[str]:
    """The queues a worker of ``app`` consumes, as it starts (``-Q``, or every queue the
    app declares): read by the bootstep, before any publish adds a queue to the app's
    list that the worker does not consume."""
    queues = app.amqp.queues
    return frozenset(queues.consume_from or queues)


class Keeper:
    """Decides whether a successor released alone runs next in this process (asked as
    ``keep(node)`` once its predecessor completed), and whether it may be begun in the
    same call that completes its predecessor (:meth:`ahead`)."""

    def __init__(self, app: Any, here: Shared) -> None:
        self.app, self.here = app, here

    def __call__(self, node: NodeSpec) -> bool:
        # asked when the node completed: a shutdown that began while it ran counts
        return not _stopping(self.here) and eligible(self.app, node, self.here)

    def ahead(self, node: NodeSpec, task_id: str) -> bool:
        """``node`` (task id ``task_id``) is kept, and may be leased as running by the
        call that completes its predecessor (complete_begin.lua): asked before that
        call, so the checks :func:`_run` makes before running it come first (a
        successor found revoked once it is leased as running is handed back)."""
        return self(node) and not _revoked(self.here, task_id)


def keeper_for(task: Task) -> Keeper | None:
    """What decides whether a successor released by the node ``task`` runs is kept for this
    process; None when none may be (off, not a worker's delivery, the chain's depth)."""
    app = task.app
    settings = state_for(app).settings
    if not settings.eager_successors or not _in_a_worker(task):
        return None
    if _chain.running and (
        _chain.ran >= settings.eager_depth
        or time.monotonic() - _chain.began >= settings.eager_seconds
    ):
        return None
    here = shared
    if here is None or _limited(app, task):  # no graph worker's bootstep in this process
        return None
    return Keeper(app, here)


def _revoked(here: Shared | None, task_id: str) -> bool:
    """``task_id`` was (or, by the Bloom filter, may have been) revoked on this worker."""
    from celery.worker import state as worker_state  # a worker's module: not at import

    return (here is not None and here.revoked(task_id)) or task_id in worker_state.revoked


def _stopping(here: Shared) -> bool:
    """The worker began to stop (a warm or cold shutdown)."""
    from celery.worker import state as worker_state  # a worker's module: not at import

    return here.stopping or bool(worker_state.should_stop or worker_state.should_terminate)


def eligible(app: Any, node: NodeSpec, here: Shared) -> bool:
    """``node``, released alone, may run in this process."""
    if node.map_source or node.waits or node.after or node.is_join or node.delay:
        return False
    if any(node.options.get(o) is not None for o in _BROKER_ONLY):
        return False
    if node.task not in here.tasks:  # registered after the worker started: its consumer
        return False  # has no strategy for it, so a message fails the run clearly
    known = app.tasks.get(node.task)
    if known is None or getattr(known, OPTION, True) is False:
        return False
    # the app's own limits: looked at for this delivery already (keeper_for)
    if not known.__dict__.get(ADOPTED) or _task_limited(known):
        return False
    if TaskLimits.of(known) is not None:  # fleet-wide limits: through its gate (gate.py)
        return False
    return queue_of(app, node) in here.queues


def follow(
    task: Task, spec: GraphSpec, message: NodeMessage | None, begun: Begun | None = None
) -> None:
    """Run the kept successor ``message`` (and the ones it keeps, up to ``graph_eager_depth``) now;
    inside a chain, hand it to the chain's loop instead (no recursion). ``begun``: what
    complete_begin.lua answered when it began the successor with its predecessor's end
    (its task takes that answer instead of calling begin.lua), else None."""
    if message is None:
        return
    if _chain.running:
        _chain.next = (spec, message, begun)
        return
    parent = task.request
    origin = {
        "hostname": parent.hostname,
        "root_id": parent.root_id or parent.id,
        "parent_id": parent.id,
    }
    _chain.running, _chain.ran, _chain.began = True, 0, time.monotonic()
    following: tuple[GraphSpec, NodeMessage, Begun | None] | None = (spec, message, begun)
    try:
        while following is not None:
            _chain.next = None
            _chain.ran += 1
            _run(task.app, *following, origin)
            following = _chain.next
    finally:
        _chain.running, _chain.ran, _chain.next = False, 0, None


def begun_ahead(message: NodeMessage) -> Begun | None:
    """What complete_begin.lua answered for ``message``'s node, when this process began it
    as its predecessor completed and runs it now (taken once: a message sent again, a
    retry, begins through begin.lua); else None."""
    ahead = _chain.ahead
    if ahead is None or ahead[0] != message.task_id or message.holder or message.infra:
        return None
    _chain.ahead = None
    return ahead[1]


def restore_request(task: Task, fields: Any) -> bool:
    """Push the request of the eager successor whose ``_graph`` keyword is ``fields`` onto
    ``task``'s request stack when the tracer's is not on top (True: the caller pops it).

    The tracer pushes the successor's request; but when the task runs inside a task of
    its own (the same task as the node before it, on the request stack already), a worker's
    ``Task.__call__`` (Celery's stack protection, always in Celery 5.3) pushes an empty
    request over it, and the node would see no id, host or delivery."""
    request = _chain.request
    if request is None or request["kwargs"].get(GRAPH_KWARG) is not fields:
        return False
    if task.request.id == request["id"]:
        return False
    # as the tracer's own request: not a direct call (Celery's Context says so by default),
    # so the successor it completes may be kept here too
    task.push_request(**request, called_directly=False)
    return True


def _tracer(app: Any, task: Task, hostname: str) -> Any:
    key = (id(task), hostname)
    tracer = _tracers.get(key)
    if tracer is None:
        # looked up now: an error reporter (Sentry) may have wrapped Celery's build_tracer
        from celery.app import trace as celery_trace  # imports the worker: not at import

        tracer = celery_trace.build_tracer(
            task.name, task, loader=app.loader, hostname=hostname, app=app
        )
        _tracers[key] = tracer
    return tracer


def _run(
    app: Any,
    spec: GraphSpec,
    message: NodeMessage,
    begun: Begun | None,
    origin: dict[str, Any],
) -> None:
    """Run one kept successor through Celery's tracer under its own task id; if it
    cannot even start, publish it (its lease would have it sent again anyway), handing
    back first the running lease complete_begin.lua gave it (``begun``)."""
    node = spec.nodes[message.node_id]
    here = shared
    try:
        if _revoked(here, message.task_id):
            # revoked through Celery: published, so the worker discards it and the run is
            # cancelled as for any revoked node (task.py's _node_revoked)
            raise LookupError(f"{message.task_id} is revoked")
        task = app.tasks[node.task]
        kwargs = dict(node.kwargs)
        kwargs[GRAPH_KWARG] = message.fields()
        task_id = message.task_id
        request = {
            "id": task_id,
            "task": task.name,
            "args": [],
            "kwargs": kwargs,
            "delivery_info": {
                "exchange": "",
                "routing_key": queue_of(app, node),
                "priority": node.options.get("priority"),
                "redelivered": False,
            },
            "is_eager": False,
            "retries": 0,
            "ignore_result": True,
            "correlation_id": task_id,
            **origin,
        }
        tracer = _tracer(app, task, origin["hostname"])
    except Exception as exc:
        logger.info("celery-graph: %s published, not run in this process: %s", message.task_id, exc)
        try:
            if begun is not None:  # as a cold shutdown hands a running successor back
                state = state_for(app)
                state.scripts.lease(
                    message.run_id,
                    Mode.RELEASE,
                    state.settings.queued_lease,
                    [message.result_field],
                    worker=origin["hostname"],
                )
            publish_nodes(app, spec, message.run_id, [message.node_id], epoch=message.epoch)
        except Exception:  # its lease runs out and the reconciler sends it
            logger.exception("celery-graph: could not publish %s", message.task_id)
        return
    token = here.enter(spec.graph_id, task_id) if here is not None else None
    events = _Events(app, task, request) if here is not None and here.events else None
    if events is not None:
        events.before()
    _chain.request = request
    _chain.ahead = None if begun is None else (task_id, begun)
    try:
        outcome = tracer(task_id, [], kwargs, request)
    finally:
        _chain.request = _chain.ahead = None
        if here is not None:
            here.leave(token)
    if events is not None:
        events.after(outcome)


class _Events:
    """The task events the worker would send for a message of this node (Flower and
    ``celery events`` list every node, eager or published): ``task-received`` and
    ``task-started`` before it runs, ``task-succeeded``, ``task-failed`` or
    ``task-retried`` after, with the fields Celery's worker gives them. Sent only when the
    worker sends task events (``-E``, ``worker_send_task_events``) and the task does
    (``send_events``); a failure to send is logged, never the node's."""

    def __init__(self, app: Any, task: Task, request: dict[str, Any]) -> None:
        self.app, self.task, self.request = app, task, request

    def _send(self, kind: str, **fields: Any) -> None:
        if not getattr(self.task, "send_events", True):
            return
        try:
            dispatcher = _chain.events
            if dispatcher is None:
                connection = self.app.connection_for_write()
                dispatcher = self.app.events.Dispatcher(
                    connection, hostname=self.request["hostname"], enabled=True
                )
                _chain.events = dispatcher
            dispatcher.send(kind, uuid=self.request["id"], **fields)
        except Exception as exc:  # the events are not the node's: it runs regardless
            _chain.events = None
            logger.warning(
                "celery-graph: could not send %s of %s: %s", kind, self.request["id"], exc
            )

    def before(self) -> None:
        from celery.utils.saferepr import saferepr

        r = self.request
        self._send(
            "task-received",
            name=self.task.name,
            args="()",
            kwargs=saferepr(r["kwargs"], 1024),
            root_id=r["root_id"],
            parent_id=r["parent_id"],
            retries=0,
            eta=None,
            expires=None,
        )
        self._send("task-started", pid=os.getpid())

    def after(self, outcome: Any) -> None:
        from celery import states
        from celery.utils.saferepr import saferepr

        retval, info, runtime, retstr = outcome
        state = info.state if info is not None else states.SUCCESS
        if state == states.SUCCESS:
            self._send("task-succeeded", result=retstr, runtime=runtime)
            return
        einfo = retval
        exc = getattr(einfo, "exception", einfo)
        exc = getattr(exc, "exc", exc)  # a Retry carries the exception it retries for
        kind = "task-retried" if state == states.RETRY else "task-failed"
        self._send(kind, exception=saferepr(exc), traceback=getattr(einfo, "traceback", ""))
