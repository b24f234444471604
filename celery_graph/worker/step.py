"""celery-graph's worker features on every Celery worker (``graph-worker`` in ``worker.py``
is a thin alias of ``celery worker``).

Any app that uses celery-graph (a graph task declared while the app exists, or the app
finalized after ``celery_graph`` was imported) gets:

- ``celery worker`` options (``app.user_options['worker']``): ``--metrics-port``,
  ``--metrics-host``, ``--graceful-timeout``, ``--key-prefix``, ``--redis-url``. Each sets
  its ``CELERY_GRAPH_*`` environment variable, so pool processes, and a worker re-executed
  by ``-D``/``celery multi``, see the same value;
- a worker bootstep (``GraphWorkerStep``) in the worker's main process: the registry entry
  and heartbeat under the worker's unique name, ``/metrics`` and ``/healthz``, a bounded
  graceful shutdown on SIGTERM/SIGINT, and the Redis 6.2+ check.

So ``celery -A proj worker --metrics-port 9808`` works; ``graph-worker`` (``worker.py``)
adds only ``RELIABLE_DEFAULTS``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import weakref
from typing import Any, NoReturn

import click
from celery import _state as _celery_state
from celery import bootsteps
from celery._state import _get_active_apps, connect_on_app_finalize
from celery.bin.base import CeleryOption
from celery.signals import worker_shutdown
from celery.worker import state as worker_state

from ..config import (
    ENV_GRACEFUL_TIMEOUT,
    ENV_METRICS_HOST,
    ENV_METRICS_PORT,
    ENV_PREFIX,
    ENV_REDIS_URL,
    RELIABLE_DEFAULTS,
    WorkerOptions,
    reliable_defaults_wanted,
)
from ..dispatch import QueueDepth
from ..errors import CeleryGraphError, ConfigurationError, NoGraphRedis, StoreUnavailable
from ..signals import graph_task_declared
from ..state import state_for
from ..state.workers import REDIS_REQUIRED, version_tuple
from .endpoint import MetricsServer, WorkerCollector
from .heartbeat import DuplicateWorkerName, Heartbeat
from .metrics import install_task_signals

logger = logging.getLogger("celery_graph.worker")

HELP_GROUP = "celery-graph Options"


# -- configuration --------------------------------------------------------------------


def user_set(conf: Any, key: str) -> bool:
    """True if the app's own configuration sets ``key`` (not Celery's default)."""
    conf.get(key)  # a pending configuration loads on first read; only then has it maps
    maps = getattr(conf, "maps", None)
    if not maps:
        return False
    return any(key in m for m in maps[:-1])


def apply_defaults(app: Any) -> dict[str, Any]:
    """Set RELIABLE_DEFAULTS the app's configuration leaves open; returns what was set."""
    applied = {}
    for key, value in RELIABLE_DEFAULTS.items():
        if not user_set(app.conf, key):
            app.conf[key] = value
            applied[key] = value
    return applied


def check_agreement(app: Any, opts: WorkerOptions) -> None:
    """--key-prefix/--redis-url must not contradict the app: workers and the code that
    starts runs read the same app config, and a worker under another prefix would not
    find the graphs it is sent."""
    for flag, value, setting in (
        ("--key-prefix", opts.key_prefix, "graph_key_prefix"),
        ("--redis-url", opts.redis_url, "graph_redis_url"),
    ):
        configured = app.conf.get(setting)
        if value is not None and configured is not None and configured != value:
            raise ConfigurationError(
                f"{flag} {value!r} contradicts app.conf.{setting} = {configured!r}; the app "
                "setting wins, so drop the flag or change the setting"
            )


# -- the worker options (click, through app.user_options['worker']) --------------------


def _app_of(ctx: click.Context) -> Any:
    obj = ctx.find_root().obj
    return getattr(obj, "app", None)


def _to_env(env: str, flag: str, setting: str | None = None) -> Any:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return value
        app = _app_of(ctx)
        if setting is not None and app is not None:
            try:
                check_agreement(app, WorkerOptions(**{setting: value}))
            except ConfigurationError as exc:
                raise click.BadParameter(str(exc)) from None
        os.environ[env] = str(value)
        return value

    return callback


WORKER_OPTIONS = (
    CeleryOption(
        ["--metrics-port"],
        type=click.IntRange(1, 65535),
        default=None,
        callback=_to_env(ENV_METRICS_PORT, "--metrics-port"),
        help_group=HELP_GROUP,
        help="Serve Prometheus metrics at /metrics and liveness at /healthz on this port "
        f"(env {ENV_METRICS_PORT}; default: off).",
    ),
    CeleryOption(
        ["--metrics-host"],
        type=str,
        default=None,
        callback=_to_env(ENV_METRICS_HOST, "--metrics-host"),
        help_group=HELP_GROUP,
        help=f"Address the metrics server listens on (env {ENV_METRICS_HOST}; default 0.0.0.0).",
    ),
    CeleryOption(
        ["--graceful-timeout"],
        type=click.FloatRange(min=0),
        default=None,
        callback=_to_env(ENV_GRACEFUL_TIMEOUT, "--graceful-timeout"),
        help_group=HELP_GROUP,
        help="On SIGTERM or SIGINT stop taking work and let running tasks finish for this "
        "many seconds, then hand the rest back to the broker (env "
        f"{ENV_GRACEFUL_TIMEOUT}; default 60). A second signal hands back at once.",
    ),
    CeleryOption(
        ["--key-prefix"],
        type=str,
        default=None,
        callback=_to_env(ENV_PREFIX, "--key-prefix", "key_prefix"),
        help_group=HELP_GROUP,
        help=f"Redis key prefix of the graph state; sets {ENV_PREFIX}. "
        "app.conf.graph_key_prefix wins; a different value there is an error.",
    ),
    CeleryOption(
        ["--redis-url"],
        type=str,
        default=None,
        callback=_to_env(ENV_REDIS_URL, "--redis-url", "redis_url"),
        help_group=HELP_GROUP,
        help=f"Redis holding the graph state; sets {ENV_REDIS_URL}. app.conf.graph_redis_url "
        "wins; a different value there is an error.",
    ),
)


# -- the bootstep ---------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    """End a starting worker with one clear line in its log (no traceback)."""
    logger.critical("celery-graph: %s", message)
    raise SystemExit(1)


class GraphWorkerStep(bootsteps.StartStopStep):
    """Registry heartbeat, /metrics and /healthz, the Redis version check and bounded
    graceful shutdown for one worker."""

    requires = ("celery.worker.components:Pool",)  # start after the pool has forked

    def __init__(self, w: Any, **kwargs: Any) -> None:
        super().__init__(w, **kwargs)
        self.heartbeat: Any = None
        self.metrics: Any = None
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
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
        if self.heartbeat is not None:
            try:
                self.heartbeat.stop()
            except CeleryGraphError:  # the TTL removes the entry anyway
                logger.warning("celery-graph: could not deregister the worker", exc_info=True)
            self.heartbeat = None


# -- attaching to apps ------------------------------------------------------------------

_installed: weakref.WeakSet[Any] = weakref.WeakSet()
_install_lock = threading.Lock()


def install(app: Any) -> None:
    """Give ``app``'s workers celery-graph's options and bootstep (idempotent). Runs by
    itself for apps that use celery-graph; call it for an app whose module imports no
    graph task before ``celery worker`` reads its options."""
    with _install_lock:
        if app in _installed:
            return
        _installed.add(app)
    app.user_options["worker"].update(WORKER_OPTIONS)
    app.steps["worker"].add(GraphWorkerStep)
    install_task_signals()  # inherited by the pool processes forked from this one
    if reliable_defaults_wanted():
        if app.configured:
            apply_defaults(app)
        else:
            app.on_after_configure.connect(
                lambda sender=None, **_: apply_defaults(sender), weak=False
            )


def _install_all(sender: Any = None, **_: Any) -> None:
    for app in list(_get_active_apps()):
        install(app)


class _AppsWatch(weakref.WeakSet):
    """Celery's set of live apps, which also installs on every app created from now on:
    ``celery worker`` reads ``app.user_options`` right after importing the app's module,
    and that module may create the app after importing its graph tasks."""

    def add(self, item: Any) -> None:
        super().add(item)
        try:
            install(item)
        except Exception:  # never break creating an app
            logger.warning("celery-graph: could not attach to app %r", item, exc_info=True)


def _watch_new_apps() -> None:
    apps = getattr(_celery_state, "_apps", None)
    if isinstance(apps, weakref.WeakSet) and not isinstance(apps, _AppsWatch):
        _celery_state._apps = _AppsWatch(apps)


# Every app that exists now or is created later, and (should Celery's internals change)
# every app declaring a graph task or finalized later, in time for the bootstep.
_install_all()
_watch_new_apps()
connect_on_app_finalize(install)
graph_task_declared.connect(_install_all, weak=False, dispatch_uid="celery_graph.worker")
