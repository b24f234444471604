"""How celery-graph attaches to an app's workers, through Celery's public hooks only.

Importing ``celery_graph`` changes nothing in Celery. An app gets celery-graph's worker
features when :func:`install` runs for it:

- when a graph task is declared (``@task``, or ``node()`` on an existing task): every app
  that exists then, and from then on every app finalized later
  (``connect_on_app_finalize``, as Celery's ``shared_task`` does);
- ``graph-worker`` installs its app itself;
- ``celery_graph.install(app)`` for an app whose module declares no graph task after the
  app exists (its worker reads ``app.user_options`` right after importing the module).

What ``install(app)`` adds:

- ``celery worker`` options (``app.user_options['worker']``): ``--metrics-port``,
  ``--metrics-host``, ``--graceful-timeout``, ``--key-prefix``, ``--redis-url``. Each sets
  its ``CELERY_GRAPH_*`` environment variable, so pool processes, and a worker re-executed
  by ``-D``/``celery multi``, see the same value;
- the worker bootstep (``app.steps['worker']``, ``step.GraphWorkerStep``, named so it is
  imported only by a worker): heartbeat, ``/metrics`` and ``/healthz``, graceful hand-back,
  the reconciler, and node messages for every task of the app;
- a consumer bootstep (``app.steps['consumer']``, ``revokes.TerminateStep``) that reads a
  copy of the control messages, so Celery's terminate reaches an eager successor;
- celery-graph's own tasks on the app: ``celery_graph.run_graph`` (a graph as a step of a
  Celery canvas) and ``celery_graph.call`` (graphs stored by earlier versions);
- receivers of Celery's task signals that only act on node messages (a node's failure,
  retry, unknown task) and count tasks for the metrics; connected once per process;
- the run, node and flow of each node on the spans of OpenTelemetry's Celery
  instrumentation and the events of Sentry's Celery integration, when those are active
  (``celery_graph.integrations``; nothing otherwise).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Any

import click
from celery._state import _get_active_apps, connect_on_app_finalize

from ..client import register_run_graph
from ..config import (
    DEFAULT_METRICS_HOST,
    ENV_GRACEFUL_TIMEOUT,
    ENV_METRICS_HOST,
    ENV_METRICS_PORT,
    ENV_PREFIX,
    ENV_REDIS_URL,
    RELIABLE_DEFAULTS,
    WorkerOptions,
    reliable_defaults_wanted,
)
from ..errors import ConfigurationError
from ..executor import connect_signals, register_call_task, register_wait_task
from ..integrations import enable as enable_integrations
from ..signals import graph_task_declared
from .metrics import install_task_signals

logger = logging.getLogger("celery_graph.worker")

HELP_GROUP = "celery-graph Options"
STEP = "celery_graph.worker.step:GraphWorkerStep"  # imported by Celery, in a worker only
# a consumer of the control messages: Celery's terminate of an eager successor
CONSUMER_STEP = "celery_graph.worker.revokes:TerminateStep"


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


class WorkerOption(click.Option):
    """A ``celery worker`` option listed under celery-graph's heading in ``--help`` (Celery's
    help groups options by their ``help_group``)."""

    def __init__(self, *args: Any, help_group: str = HELP_GROUP, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help_group = help_group


WORKER_OPTIONS = (
    WorkerOption(
        ["--metrics-port"],
        type=click.IntRange(1, 65535),
        default=None,
        callback=_to_env(ENV_METRICS_PORT, "--metrics-port"),
        help="Serve Prometheus metrics at /metrics and liveness at /healthz on this port "
        f"(env {ENV_METRICS_PORT}; default: off).",
    ),
    WorkerOption(
        ["--metrics-host"],
        type=str,
        default=None,
        callback=_to_env(ENV_METRICS_HOST, "--metrics-host"),
        help=f"Address the metrics server listens on (env {ENV_METRICS_HOST}; default "
        f"{DEFAULT_METRICS_HOST}; 0.0.0.0 for a Prometheus on another host).",
    ),
    WorkerOption(
        ["--graceful-timeout"],
        type=click.FloatRange(min=0),
        default=None,
        callback=_to_env(ENV_GRACEFUL_TIMEOUT, "--graceful-timeout"),
        help="On SIGTERM or SIGINT stop taking work and let running tasks finish for this "
        "many seconds, then hand the rest back to the broker (env "
        f"{ENV_GRACEFUL_TIMEOUT}; default 60). A second signal hands back at once.",
    ),
    WorkerOption(
        ["--key-prefix"],
        type=str,
        default=None,
        callback=_to_env(ENV_PREFIX, "--key-prefix", "key_prefix"),
        help=f"Redis key prefix of the graph state; sets {ENV_PREFIX}. "
        "app.conf.graph_key_prefix wins; a different value there is an error.",
    ),
    WorkerOption(
        ["--redis-url"],
        type=str,
        default=None,
        callback=_to_env(ENV_REDIS_URL, "--redis-url", "redis_url"),
        help=f"Redis holding the graph state; sets {ENV_REDIS_URL}. app.conf.graph_redis_url "
        "wins; a different value there is an error.",
    ),
)


# -- attaching to apps ------------------------------------------------------------------

_installed: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()
_watching = False


def install(app: Any) -> None:
    """Give ``app``'s workers celery-graph's options and bootstep (idempotent).

    It runs by itself for the apps that exist when a graph task is declared, and for every
    app finalized after that. Call it for an app whose module declares no graph task once
    the app exists, before ``celery worker`` reads its options::

        app = Celery("proj")
        celery_graph.install(app)
    """
    with _lock:
        if app in _installed:
            return
        _installed.add(app)
    app.user_options["worker"].update(WORKER_OPTIONS)
    app.steps["worker"].add(STEP)
    app.steps["consumer"].add(CONSUMER_STEP)
    register_run_graph(app)
    register_call_task(app)
    register_wait_task(app)
    connect_signals()  # in this process and in the pool processes forked from it
    install_task_signals()
    enable_integrations()  # run, node and flow on OpenTelemetry spans and Sentry events
    if reliable_defaults_wanted():
        if app.configured:
            apply_defaults(app)
        else:
            app.on_after_configure.connect(
                lambda sender=None, **_: apply_defaults(sender), weak=False
            )


def _on_finalize(app: Any) -> None:
    try:
        install(app)
    except Exception:  # never break finalizing an app
        logger.warning("celery-graph: could not attach to app %r", app, exc_info=True)


def _on_declared(sender: Any = None, **_: Any) -> None:
    """A graph task was declared: the apps that exist get the worker features now (their
    workers read the options soon), the apps finalized from now on when they are."""
    global _watching
    with _lock:
        watch, _watching = not _watching, True
    if watch:
        connect_on_app_finalize(_on_finalize)
    for app in list(_get_active_apps()):
        _on_finalize(app)


graph_task_declared.connect(_on_declared, weak=False, dispatch_uid="celery_graph.attach")
