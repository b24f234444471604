"""The bootstep of every ``celery worker`` of an app using celery-graph (``attach.py``
adds it to ``app.steps['worker']`` by name, so only a worker imports this module).

In the worker's main process: the registry entry and heartbeat under the worker's unique
name, ``/metrics`` and ``/healthz`` (``--metrics-port``), a bounded graceful shutdown on
SIGTERM/SIGINT, the Redis 6.2+ check, the reconciler thread and the watch on revoked node
messages (revokes.py). Before the pool starts:
every task of the worker's app can run node messages under its own name (``adopt``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any, NoReturn

from celery import bootsteps
from celery.concurrency.thread import TaskPool as ThreadTaskPool
from celery.signals import worker_shutdown
from celery.worker import state as worker_state

from ..compat import COLD_SHUTDOWN_CANCELS, has, ignored_settings
from ..config import WorkerOptions, reliable_defaults_wanted
from ..dispatch import QueueDepth, publish_nodes
from ..engine.reconcile import SweepThread
from ..errors import (
    CeleryGraphError,
    ConfigurationError,
    MalformedMessage,
    NoGraphRedis,
    StoreUnavailable,
)
from ..executor import adopt_tasks, eager
from ..protocol import NodeMessage, NodeTaskId, graph_fields
from ..state import Mode, state_for
from ..state.workers import REDIS_REQUIRED, version_tuple
from .endpoint import MetricsServer, WorkerCollector
from .heartbeat import DuplicateWorkerName, Heartbeat
from .revokes import RevokeWatch

logger = logging.getLogger("celery_graph.worker")

RELEASE_WAIT = 2.0  # seconds a cold shutdown waits for the leases it hands back to be released


def _requests(requests: Any) -> list[Any]:
    """A copy of one of Celery's sets of requests (weak sets the consumer changes while
    the heartbeat thread reads them)."""
    for _ in range(5):
        try:
            return list(requests)
        except RuntimeError:  # changed size during iteration: read it again
            continue
    return []


def node_messages(requests: Any) -> list[NodeMessage]:
    """The node messages among ``requests`` (Celery's ``Request`` objects)."""
    out = []
    for request in _requests(requests):
        fields = graph_fields(getattr(request, "kwargs", None))
        if fields is None:
            continue
        try:
            out.append(NodeMessage.parse(fields))
        except MalformedMessage:
            continue
    return out


def held() -> list[str]:
    """ "<run id>:<field>" of every node message this worker holds: prefetched or reserved
    (waiting for a pool slot), or running. Its heartbeat lists them, so the reconciler
    does not send them again while they wait in this worker (a stock prefetch of four per
    process keeps messages out of the broker's queue for as long as the work ahead of
    them takes)."""
    return [
        m.unit
        for m in node_messages(worker_state.reserved_requests)
        + node_messages(worker_state.active_requests)
    ]


def _fail(message: str) -> NoReturn:
    """End a starting worker with one clear line in its log (no traceback)."""
    logger.critical("celery-graph: %s", message)
    raise SystemExit(1)


def _cancel_unacked(w: Any) -> None:
    """What a cold shutdown does since Celery 5.5, for an older Celery: stop taking
    messages and cancel the running late-ack tasks not acknowledged yet, so that their
    messages stay unacknowledged and return to the queue when the connection closes."""
    consumer = getattr(w, "consumer", None)
    if consumer is None:
        return
    if consumer.task_consumer is not None:
        try:
            consumer.task_consumer.cancel()
        except Exception:  # a broker already gone: the connection's close hands back too
            logger.debug("celery-graph: could not cancel the task consumer", exc_info=True)
    for request in tuple(worker_state.active_requests):
        if request.task.acks_late and not request.acknowledged:
            request.cancel(consumer.pool)


# How often a threads-pool worker's event loop wakes at least (GraphWorkerStep._wake_the_loop)
LOOP_TICK = 0.1


def _nothing() -> None:
    """A timer entry that only makes the event loop run once more."""


class GraphWorkerStep(bootsteps.StartStopStep):
    """Registry heartbeat, /metrics and /healthz, the Redis version check, the reconciler
    and bounded graceful shutdown for one worker."""

    requires = ("celery.worker.components:Pool",)  # start after the pool has forked

    def __init__(self, w: Any, **kwargs: Any) -> None:
        super().__init__(w, **kwargs)
        # Built with the worker, before its pool forks and its consumer builds the
        # tracers (which keep each task's run): every task of the app runs node messages.
        adopt_tasks(w.app)
        # shared with the pool processes it forks (executor/eager.py): the tasks this
        # worker has, that it is stopping, the ids revoked on it and the eager successors
        # they run, which a cold shutdown hands back
        self.eager = eager.share(w.app, events=bool(getattr(w, "task_events", False)))
        self.heartbeat: Any = None
        self.metrics: Any = None
        self.sweeper: SweepThread | None = None
        self.revokes: RevokeWatch | None = None
        self._shutdown_started = False
        self._timer: threading.Timer | None = None
        self._worker: Any = None

    def start(self, w: Any) -> None:
        self._wake_the_loop(w)
        for line in ignored_settings(w.app.conf):
            logger.warning("celery-graph: %s", line)
        try:
            opts = WorkerOptions.from_env()
        except ConfigurationError as exc:
            _fail(str(exc))
        try:
            state = state_for(w.app)
        except NoGraphRedis as exc:
            # an app that runs no graphs on this worker (RabbitMQ broker, no graph URL)
            if opts.metrics_port is not None or reliable_defaults_wanted():
                _fail(str(exc))
            logger.warning("celery-graph: no graph Redis, no registry or metrics: %s", exc)
            return
        except ConfigurationError as exc:  # malformed: every graph message would fail
            _fail(str(exc))
        self._worker = w
        worker_shutdown.connect(self._on_worker_shutdown, weak=False)
        queues = lambda: sorted(w.app.amqp.queues.consume_from or w.app.amqp.queues)  # noqa: E731
        in_flight = lambda: len(worker_state.active_requests)  # noqa: E731
        self.heartbeat = Heartbeat(
            state,
            w.hostname,
            describe=lambda: {"queues": queues(), "in_flight": in_flight(), "held": held()},
        )
        try:
            self._check_version(state)
            self.heartbeat.start()
        except DuplicateWorkerName as exc:
            self.heartbeat = None
            _fail(str(exc))
        except StoreUnavailable as exc:
            self.heartbeat = None
            _fail(f"cannot reach the graph Redis at start ({exc})")
        self.sweeper = SweepThread(w.app).start()  # one sweep at a time across workers
        self.revokes = RevokeWatch(w.app).start()  # revokes of running or future nodes
        if opts.metrics_port is not None:
            collector = WorkerCollector(
                state, w.hostname, time.monotonic(), queues, in_flight, QueueDepth(w.app)
            )
            self.metrics = MetricsServer(
                collector, opts.metrics_port, opts.metrics_host, healthy=lambda: self._healthy(w)
            )
            try:
                self.metrics.start()
            except ConfigurationError as exc:
                self.metrics = None
                self._cleanup()
                _fail(str(exc))
            logger.info(
                "celery-graph: metrics at %s:%s/metrics, liveness at /healthz",
                opts.metrics_host,
                opts.metrics_port,
            )
        self._install_signal_handlers(w, opts.graceful_timeout)

    @staticmethod
    def _wake_the_loop(w: Any) -> None:
        """With the threads pool, wake the worker's event loop every ``LOOP_TICK`` seconds.

        A pool thread that finishes a task acks its message without waking the event loop,
        and kombu's Redis transport asks the broker for the next message only when the loop
        runs and the prefetch window has room. With the window full, nothing else wakes the
        loop before kombu's own timers: every 10 s (the unacked restore) before kombu 5.7,
        every second since. So on Celery 5.3 to 5.6 a burst of messages (a map's items)
        was taken four at a time, ten seconds apart, until the reconciler sent them again.
        The prefork pool reports results through pipes, which wake the loop."""
        hub = getattr(w, "hub", None)
        if hub is not None and isinstance(getattr(w, "pool", None), ThreadTaskPool):
            hub.call_repeatedly(LOOP_TICK, _nothing)

    @staticmethod
    def _check_version(state: Any) -> None:
        found = state.workers.server_version()
        if version_tuple(found) < REDIS_REQUIRED:
            needed = ".".join(map(str, REDIS_REQUIRED))
            _fail(
                f"the graph Redis ({state.settings.redis_url}) runs Redis {found}; "
                f"celery-graph needs Redis {needed} or later (GETEX, BLMOVE)"
            )

    def _healthy(self, w: Any) -> bool:
        """Liveness without Redis or the broker: the worker and its consumer run."""
        if self._shutdown_started or w.blueprint is None:
            return False
        if w.blueprint.state != bootsteps.RUN:
            return False
        consumer = getattr(w, "consumer", None)
        return consumer is not None and consumer.blueprint.state not in (
            bootsteps.CLOSE,
            bootsteps.TERMINATE,
        )

    def _install_signal_handlers(self, w: Any, timeout: float) -> None:
        # Celery installed its handlers in on_start, before the steps start. Its SIGTERM
        # handler is the warm shutdown: stop consuming, wait for running tasks, without
        # limit. Both SIGTERM and SIGINT start that here, with a deadline.
        warm = signal.getsignal(signal.SIGTERM)
        if not callable(warm):
            return
        main_pid = os.getpid()

        def cold() -> None:
            # Celery's cold shutdown (SIGQUIT): cancel the running late-ack tasks, whose
            # unacked messages the broker connection hands back when it closes. Their
            # running leases are released first (for at most RELEASE_WAIT seconds), so the
            # handed-back messages run at once where they land instead of waiting for the
            # leases to run out.
            def hand_back() -> None:
                releasing = threading.Thread(target=self._release_leases, daemon=True)
                releasing.start()
                releasing.join(RELEASE_WAIT)
                os.kill(main_pid, signal.SIGQUIT)

            threading.Thread(target=hand_back, name="celery-graph-hand-back", daemon=True).start()

        def handler(signum: int, frame: Any) -> None:
            if os.getpid() != main_pid:
                return
            # No lock: handlers run one at a time in the main thread, and a lock taken in
            # a handler would deadlock if a second signal arrived inside it.
            first = not self._shutdown_started
            self._shutdown_started = True
            self.eager.stop()  # no new eager successor: the node after is published
            if not first:
                cold()
                return
            threading.Thread(target=self._mark_stopping, daemon=True).start()
            self._timer = threading.Timer(timeout, cold)
            self._timer.daemon = True
            self._timer.start()
            warm(signal.SIGTERM, frame)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

        cold_shutdown = signal.getsignal(signal.SIGQUIT)
        if not has(COLD_SHUTDOWN_CANCELS) and callable(cold_shutdown):

            def hand_back_then_cold(signum: int, frame: Any) -> None:
                if os.getpid() == main_pid:
                    _cancel_unacked(w)
                cold_shutdown(signum, frame)

            signal.signal(signal.SIGQUIT, hand_back_then_cold)

    def _release_leases(self) -> None:
        """Release the running leases of the node messages this worker runs: it hands them
        back to the broker (lease.lua "release": only those whose latest attempt is still
        this worker's)."""
        w = self._worker
        if w is None:
            return
        by_run: dict[str, list[str]] = {}
        for m in node_messages(worker_state.active_requests):
            by_run.setdefault(m.run_id, []).append(m.result_field)
        try:
            state = state_for(w.app)
            for run_id, fields in by_run.items():
                state.scripts.lease(
                    run_id, Mode.RELEASE, state.settings.queued_lease, fields, worker=w.hostname
                )
            self._hand_back_eager(state, w)
        except CeleryGraphError as exc:  # their leases run out instead: slower, not lost
            logger.warning("celery-graph: could not release the leases handed back: %s", exc)

    def _hand_back_eager(self, state: Any, w: Any) -> None:
        """The eager successors running here have no message of their own to hand back
        (the message that started their chain is handed back, and finds its node done):
        release each one's lease and publish it, so it runs at once where it lands."""
        for graph_id, task_id in self.eager.running():
            parsed = NodeTaskId.parse(task_id)
            if parsed is None:
                continue
            lease = state.settings.queued_lease
            released = state.scripts.lease(
                parsed.run_id, Mode.RELEASE, lease, [parsed.field], worker=w.hostname
            )
            if released:
                spec = state.graphs.load(graph_id)
                publish_nodes(w.app, spec, parsed.run_id, [parsed.node_id], epoch=parsed.epoch)
                logger.info("celery-graph: eager successor %s handed back", task_id)

    def _mark_stopping(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.mark_stopping()

    def _on_worker_shutdown(self, sender: Any = None, **_: Any) -> None:
        if sender is self._worker:
            self._cleanup()

    def shutdown(self, w: Any) -> None:
        self._cleanup()

    def terminate(self, w: Any) -> None:
        # The cold path (WorkController.terminate: WorkerTerminate, an embedded worker
        # stopped through ``state.should_terminate``) sends no worker_shutdown; running
        # tasks are cancelled, so nothing is left to heartbeat for. A warm stop keeps the
        # threads until worker_shutdown, after the pool has drained.
        self._cleanup()

    def _cleanup(self) -> None:
        if self._timer is not None:  # everything finished within the graceful timeout
            self._timer.cancel()
        if self.sweeper is not None:
            self.sweeper.stop()
            self.sweeper = None
        if self.revokes is not None:
            self.revokes.stop()
            self.revokes = None
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
        if self.heartbeat is not None:
            try:
                self.heartbeat.stop()
            except CeleryGraphError:  # the TTL removes the entry anyway
                logger.warning("celery-graph: could not deregister the worker", exc_info=True)
            self.heartbeat = None
