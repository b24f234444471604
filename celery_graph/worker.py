"""``graph-worker``: ``celery worker`` with reliable defaults for graph work, graceful
shutdown, a heartbeat registry and Prometheus metrics.

Every ``celery worker`` option passes through unchanged; graph-worker adds four::

    graph-worker -A proj.celery -Q gpu -c 4 --graceful-timeout 120 --metrics-port 9808

How it works: graph-worker loads the app named by ``-A`` itself, applies the defaults
the user's configuration leaves open, installs a worker bootstep, then hands the
command line to Celery's own ``celery worker`` (``celery.bin.celery``) in this process.
The bootstep runs in the worker's main process: it registers the worker and keeps its
heartbeat, serves ``/metrics``, and turns SIGTERM/SIGINT into a bounded warm shutdown.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any

import click
from celery import bootsteps
from celery.bin.celery import celery as celery_command
from celery.bin.worker import worker as worker_command
from celery.signals import worker_shutdown
from celery.worker import state as worker_state

from .apploader import app_ref, load_app
from .config import (
    ENV_GRACEFUL_TIMEOUT,
    ENV_PREFIX,
    ENV_REDIS_URL,
    RELIABLE_DEFAULTS,
    Settings,
    WorkerOptions,
)
from .dispatch import QueueDepth
from .errors import ConfigurationError
from .metrics import MetricsServer, WorkerCollector, install_task_signals
from .registry import Heartbeat
from .state import state_for

logger = logging.getLogger("celery_graph.worker")

# Celery's global options, which must come before the `worker` sub-command.
_GLOBAL_WITH_VALUE = {"-A", "--app", "-b", "--broker", "--result-backend", "--loader",
                      "--config", "--workdir"}
_GLOBAL_FLAGS = {"-C", "--no-color", "-q", "--quiet", "--skip-checks"}

USAGE = """\
Usage: graph-worker -A APP [GRAPH-WORKER OPTIONS] [CELERY WORKER OPTIONS]

  Start a Celery worker for celery-graph: `celery -A APP worker ...` plus graceful
  shutdown, a heartbeat registry (`celery-graph workers`) and Prometheus metrics.
  Every `celery worker` option below passes through unchanged (-A, -Q, -c, -P, -n,
  -l, --without-mingle, ...).

  Applied unless your Celery configuration sets them: task_acks_late=True,
  task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
  worker_send_task_events=True (-E).

graph-worker options:
  --key-prefix TEXT          Redis key prefix of the graph state; sets
                             CELERY_GRAPH_KEY_PREFIX. app.conf.graph_key_prefix wins;
                             a different value there is an error.
  --redis-url URL            Redis holding the graph state; sets CELERY_GRAPH_REDIS_URL.
                             app.conf.graph_redis_url wins; a different value there is
                             an error.
  --metrics-port PORT        Serve Prometheus metrics at http://0.0.0.0:PORT/metrics
                             (env CELERY_GRAPH_METRICS_PORT; default: off).
  --graceful-timeout SECONDS On SIGTERM or SIGINT stop taking work and let running tasks
                             finish for this long, then hand the rest back to the broker
                             for another worker (env CELERY_GRAPH_GRACEFUL_TIMEOUT;
                             default 60). A second SIGTERM/SIGINT hands back at once.
  -h, --help                 Show this message and exit.

Celery's global options (graph-worker puts them before `worker` for you):
  -A, --app APP              The Celery app, e.g. proj.celery (env CELERY_APP).
  -b, --broker URL           Broker URL (env CELERY_BROKER_URL).
  --result-backend URL, --loader, --config MODULE, --workdir PATH,
  -C, --no-color, -q, --quiet, --skip-checks

"""


_current = WorkerOptions()


class UsageError(Exception):
    pass


def _take(argv: list[str], i: int, name: str) -> tuple[str, int]:
    arg = argv[i]
    if arg.startswith(name + "="):
        return arg.split("=", 1)[1], i + 1
    if i + 1 >= len(argv):
        raise UsageError(f"option {name} needs a value")
    return argv[i + 1], i + 2


def parse_argv(argv: list[str]) -> tuple[WorkerOptions, list[str], list[str], bool]:
    """Split graph-worker's command line into (its options, Celery's global options,
    `celery worker` options, help requested)."""
    opts = WorkerOptions.from_env()
    global_args: list[str] = []
    worker_args: list[str] = []
    want_help = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if name == "--key-prefix":
            opts.key_prefix, i = _take(argv, i, name)
        elif name == "--redis-url":
            opts.redis_url, i = _take(argv, i, name)
        elif name == "--metrics-port":
            value, i = _take(argv, i, name)
            try:
                opts.metrics_port = int(value)
            except ValueError:
                raise UsageError(f"--metrics-port {value!r} is not a port number") from None
        elif name == "--graceful-timeout":
            value, i = _take(argv, i, name)
            try:
                opts.graceful_timeout = float(value)
            except ValueError:
                raise UsageError(f"--graceful-timeout {value!r} is not seconds") from None
            if opts.graceful_timeout < 0:
                raise UsageError("--graceful-timeout must be 0 or more seconds")
        elif arg in ("-h", "--help"):
            want_help = True
            i += 1
        elif name in _GLOBAL_WITH_VALUE:
            if "=" in arg:
                global_args.append(arg)
                i += 1
            else:
                global_args.extend(argv[i : i + 2])
                i += 2
        elif (arg.startswith("-A") and len(arg) > 2) or arg in _GLOBAL_FLAGS:  # -Aproj
            global_args.append(arg)
            i += 1
        elif arg == "worker" and not worker_args:  # tolerate `graph-worker -A x worker`
            i += 1
        else:
            worker_args.append(arg)
            i += 1
    if "-D" in worker_args or "--detach" in worker_args:
        raise UsageError(
            "graph-worker does not detach (-D/--detach): run it under a supervisor "
            "(systemd, Kubernetes, honcho) that sends SIGTERM to stop it"
        )
    return opts, global_args, worker_args, want_help


def celery_worker_help() -> str:
    ctx = click.Context(worker_command, info_name="graph-worker")
    return worker_command.get_help(ctx)


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


# -- the bootstep ---------------------------------------------------------------------


class GraphWorkerStep(bootsteps.StartStopStep):
    """Registry heartbeat, metrics endpoint and bounded graceful shutdown for one worker."""

    requires = ("celery.worker.components:Pool",)  # start after the pool has forked

    def __init__(self, w: Any, **kwargs: Any) -> None:
        super().__init__(w, **kwargs)
        self.heartbeat: Any = None
        self.metrics: Any = None
        self._shutdown_started = False
        self._timer: threading.Timer | None = None
        self._worker: Any = None

    def start(self, w: Any) -> None:
        state = state_for(w.app)
        queues = lambda: sorted(w.app.amqp.queues.consume_from or w.app.amqp.queues)  # noqa: E731
        in_flight = lambda: len(worker_state.active_requests)  # noqa: E731
        self.heartbeat = Heartbeat(
            state,
            w.hostname,
            describe=lambda: {"queues": queues(), "in_flight": in_flight()},
        )
        self.heartbeat.start()
        self._worker = w
        worker_shutdown.connect(self._on_worker_shutdown, weak=False)
        if _current.metrics_port is not None:
            collector = WorkerCollector(
                state,
                w.hostname,
                self.heartbeat.started,
                queues,
                in_flight,
                QueueDepth(w.app),
            )
            self.metrics = MetricsServer(collector, _current.metrics_port)
            self.metrics.start()
            logger.info("celery-graph: metrics at :%s/metrics", _current.metrics_port)
        self._install_signal_handlers(w)

    def _install_signal_handlers(self, w: Any) -> None:
        # Celery installed its handlers in on_start, before the steps start. Its SIGTERM
        # handler is the warm shutdown: stop consuming, wait for running tasks, without
        # limit. Both SIGTERM and SIGINT start that here, with a deadline.
        warm = signal.getsignal(signal.SIGTERM)
        if not callable(warm):
            return
        timeout = _current.graceful_timeout
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
            except Exception:  # the TTL removes the entry anyway
                logger.warning("celery-graph: could not deregister the worker", exc_info=True)
            self.heartbeat = None


# -- the command ----------------------------------------------------------------------


def prepare(app: Any, opts: WorkerOptions) -> dict[str, Any]:
    """Make ``app`` a graph worker's app: defaults and the bootstep."""
    check_agreement(app, opts)
    finalized = app.finalized
    applied = apply_defaults(app)
    task_level = {"task_acks_late", "task_reject_on_worker_lost"} & set(applied)
    if finalized and task_level:
        # Celery copies these settings into each task class when the app is finalized;
        # an app finalized at import kept the old values, and graph-worker cannot tell
        # them from options the user gave a task on purpose.
        print(
            f"graph-worker: warning: the app was finalized when its module was imported, so "
            f"{', '.join(sorted(task_level))} did not reach its tasks; set them in the app's "
            "configuration (or do not finalize the app at import)",
            file=sys.stderr,
        )
    Settings.from_app(app)  # fail now, with the message, if there is no graph Redis
    steps = app.steps["worker"]
    if GraphWorkerStep not in steps:
        steps.add(GraphWorkerStep)
    return applied


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        opts, global_args, worker_args, want_help = parse_argv(argv)
    except UsageError as exc:
        print(f"graph-worker: {exc}\n\n{USAGE}", file=sys.stderr)
        return 2
    if want_help:
        print(USAGE + "celery worker options (passed through unchanged):\n")
        print(celery_worker_help())
        return 0
    name = app_ref(global_args)
    if not name:
        print("graph-worker: name the Celery app with -A/--app (or CELERY_APP)\n\n" + USAGE,
              file=sys.stderr)
        return 2
    if opts.key_prefix is not None:
        os.environ[ENV_PREFIX] = opts.key_prefix
    if opts.redis_url is not None:
        os.environ[ENV_REDIS_URL] = opts.redis_url
    # Celery's child processes and anything they start see the same settings.
    os.environ[ENV_GRACEFUL_TIMEOUT] = repr(opts.graceful_timeout)
    global _current
    _current = opts

    workdir = next((global_args[i + 1] for i, a in enumerate(global_args)
                    if a == "--workdir" and i + 1 < len(global_args)), None)
    if workdir:
        os.chdir(workdir)
    try:
        app = load_app(name, set_current=False)
        applied = prepare(app, opts)
    except ConfigurationError as exc:
        print(f"graph-worker: {exc}", file=sys.stderr)
        return 2
    if applied:
        logger.info("celery-graph: applied defaults %s", applied)

    install_task_signals()  # inherited by the pool processes forked from this one

    return int(
        celery_command.main(
            args=[*global_args, "worker", *worker_args],
            prog_name="graph-worker",
            auto_envvar_prefix="CELERY",
            standalone_mode=False,
        )
        or 0
    )


if __name__ == "__main__":
    sys.exit(main())
