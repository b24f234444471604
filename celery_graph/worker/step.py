"""The bootstep of every ``celery worker`` of an app using celery-graph (``attach.py``
adds it to ``app.steps['worker']`` by name, so only a worker imports this module).

In the worker's main process: the registry entry and heartbeat under the worker's unique
name, ``/metrics`` and ``/healthz`` (``--metrics-port``), a bounded graceful shutdown on
SIGTERM/SIGINT, the Redis 6.2+ check and the reconciler thread. Before the pool starts:
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
from celery.signals import worker_shutdown
from celery.worker import state as worker_state

from ..config import WorkerOptions, reliable_defaults_wanted
from ..dispatch import QueueDepth
from ..engine.reconcile import SweepThread
from ..errors import CeleryGraphError, ConfigurationError, NoGraphRedis, StoreUnavailable
from ..executor import adopt_tasks
from ..state import state_for
from ..state.workers import REDIS_REQUIRED, version_tuple
from .endpoint import MetricsServer, WorkerCollector
from .heartbeat import DuplicateWorkerName, Heartbeat

logger = logging.getLogger("celery_graph.worker")


def _fail(message: str) -> NoReturn:
    """End a starting worker with one clear line in its log (no traceback)."""
    logger.critical("celery-graph: %s", message)
    raise SystemExit(1)


class GraphWorkerStep(bootsteps.StartStopStep):
    """Registry heartbeat, /metrics and /healthz, the Redis version check, the reconciler
    and bounded graceful shutdown for one worker."""

    requires = ("celery.worker.components:Pool",)  # start after the pool has forked

    def __init__(self, w: Any, **kwargs: Any) -> None:
        super().__init__(w, **kwargs)
        # Built with the worker, before its pool forks and its consumer builds the
        # tracers (which keep each task's run): every task of the app runs node messages.
        adopt_tasks(w.app)
        self.heartbeat: Any = None
        self.metrics: Any = None
        self.sweeper: SweepThread | None = None
        self._shutdown_started = False
        self._timer: threading.Timer | None = None
        self._worker: Any = None

    def start(self, w: Any) -> None:
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
            state, w.hostname, describe=lambda: {"queues": queues(), "in_flight": in_flight()}
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
        self._install_signal_handlers(opts.graceful_timeout)

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

    def _install_signal_handlers(self, timeout: float) -> None:
        # Celery installed its handlers in on_start, before the steps start. Its SIGTERM
        # handler is the warm shutdown: stop consuming, wait for running tasks, without
        # limit. Both SIGTERM and SIGINT start that here, with a deadline.
        warm = signal.getsignal(signal.SIGTERM)
        if not callable(warm):
            return
        main_pid = os.getpid()

        def cold() -> None:
            # Celery's cold shutdown (SIGQUIT): cancel the running late-ack tasks, whose
            # unacked messages the broker connection hands back when it closes.
            os.kill(main_pid, signal.SIGQUIT)

        def handler(signum: int, frame: Any) -> None:
            if os.getpid() != main_pid:
                return
            # No lock: handlers run one at a time in the main thread, and a lock taken in
            # a handler would deadlock if a second signal arrived inside it.
            first = not self._shutdown_started
            self._shutdown_started = True
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

    def _mark_stopping(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.mark_stopping()

    def _on_worker_shutdown(self, sender: Any = None, **_: Any) -> None:
        if sender is self._worker:
            self._cleanup()

    def shutdown(self, w: Any) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        if self._timer is not None:  # everything finished within the graceful timeout
            self._timer.cancel()
        if self.sweeper is not None:
            self.sweeper.stop()
            self.sweeper = None
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
        if self.heartbeat is not None:
            try:
                self.heartbeat.stop()
            except CeleryGraphError:  # the TTL removes the entry anyway
                logger.warning("celery-graph: could not deregister the worker", exc_info=True)
            self.heartbeat = None
