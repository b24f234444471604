"""``graph-worker``: a thin alias of ``celery -A APP worker`` with celery-graph's reliable
defaults. The worker options and bootstep it relies on (``attach.py``, ``step.py``) reach
every app that uses celery-graph, so plain ``celery worker`` has them too::

    graph-worker -A proj -Q gpu -c 4 --metrics-port 9808 [-D --pidfile ...]

is ``celery -A proj worker -Q gpu -c 4 --metrics-port 9808 [...]`` with
``RELIABLE_DEFAULTS`` applied where the app's configuration leaves them open.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from ..apploader import app_ref, load_app
from ..config import (
    DEFAULT_METRICS_HOST,
    ENV_GRACEFUL_TIMEOUT,
    ENV_METRICS_HOST,
    ENV_METRICS_PORT,
    ENV_PREFIX,
    ENV_REDIS_URL,
    ENV_RELIABLE_DEFAULTS,
)
from ..errors import ConfigurationError, UsageError
from .attach import WORKER_OPTIONS, apply_defaults, check_agreement, install, user_set

logger = logging.getLogger("celery_graph.worker")

# -- graph-worker ---------------------------------------------------------------------

USAGE = f"""\
Usage: graph-worker -A APP [CELERY WORKER OPTIONS]

  `celery -A APP worker ...` with celery-graph's reliable defaults applied where the app's
  configuration leaves them open: task_acks_late=True, task_reject_on_worker_lost=True,
  worker_prefetch_multiplier=1, worker_send_task_events=True (-E). Every option passes
  through to `celery worker`, -D/--detach and --pidfile included; Celery's global options
  (-A, -b, --workdir, ...) may come anywhere.

celery-graph options (also on plain `celery -A APP worker`):
  --key-prefix TEXT          Redis key prefix of the graph state; sets {ENV_PREFIX}.
                             app.conf.graph_key_prefix wins; a different value there is
                             an error.
  --redis-url URL            Redis holding the graph state; sets {ENV_REDIS_URL}.
                             app.conf.graph_redis_url wins; a different value there is
                             an error.
  --metrics-port PORT        Serve Prometheus metrics at http://HOST:PORT/metrics and
                             liveness at /healthz (env {ENV_METRICS_PORT}; default: off).
  --metrics-host ADDRESS     Address to listen on (env {ENV_METRICS_HOST}; default
                             {DEFAULT_METRICS_HOST}; 0.0.0.0 for a Prometheus elsewhere).
  --graceful-timeout SECONDS On SIGTERM or SIGINT stop taking work and let running tasks
                             finish for this long, then hand the rest back to the broker
                             for another worker ({ENV_GRACEFUL_TIMEOUT}; default 60).
                             A second SIGTERM/SIGINT hands back at once.
  -h, --help                 Show this message and exit.

Celery's global options (graph-worker puts them before `worker` for you):
  -A, --app APP              The Celery app, e.g. proj.celery (env CELERY_APP).
  -b, --broker URL           Broker URL (env CELERY_BROKER_URL).
  --result-backend URL, --loader, --config MODULE, --workdir PATH,
  -C, --no-color, -q, --quiet, --skip-checks

"""


def _global_options() -> tuple[set[str], set[str]]:
    """Celery's global options (names taking a value, flags), read from its command."""
    from celery.bin.celery import celery as celery_command  # the CLI, only for the command

    with_value: set[str] = set()
    flags: set[str] = set()
    for p in celery_command.params:
        if isinstance(p, click.Option):
            (flags if p.is_flag or p.count else with_value).update(p.opts + p.secondary_opts)
    return with_value, flags


def split_argv(argv: list[str]) -> tuple[list[str], list[str], bool]:
    """Split graph-worker's command line into (Celery's global options, `celery worker`
    options, help requested)."""
    with_value, flags = _global_options()
    global_args: list[str] = []
    worker_args: list[str] = []
    want_help = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        short_a = arg.startswith("-A") and len(arg) > 2 and not arg.startswith("--")
        if arg in ("-h", "--help"):
            want_help = True
        elif (name in with_value and arg.startswith("--") and "=" in arg) or short_a:
            global_args.append(arg)
        elif arg in with_value:
            if i + 1 >= len(argv):
                raise UsageError(f"option {arg} needs a value")
            global_args.extend(argv[i : i + 2])
            i += 1
        elif arg in flags and arg not in ("--version",):
            global_args.append(arg)
        elif arg == "worker" and not worker_args:  # tolerate `graph-worker -A x worker`
            pass
        else:
            worker_args.append(arg)
        i += 1
    return global_args, worker_args, want_help


def prepare(app: Any) -> dict[str, Any]:
    """Make ``app`` a graph worker's app: the options, the bootstep and the defaults."""
    finalized = app.finalized
    install(app)
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
    return applied


def celery_worker_help(app: Any = None) -> str:
    from celery.bin.worker import worker as worker_command  # the CLI, only for its help

    ctx = click.Context(worker_command, info_name="graph-worker")
    return worker_command.get_help(ctx)


def main(argv: list[str] | None = None) -> int:
    from celery.bin.celery import celery as celery_command  # the CLI, only to run it

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        global_args, worker_args, want_help = split_argv(argv)
    except UsageError as exc:
        print(f"graph-worker: {exc}\n\n{USAGE}", file=sys.stderr)
        return 2
    if want_help:
        print(USAGE + "celery worker options (passed through unchanged):\n")
        print(celery_worker_help())
        return 0
    name = app_ref(global_args)
    if not name:
        print(
            "graph-worker: name the Celery app with -A/--app (or CELERY_APP)\n\n" + USAGE,
            file=sys.stderr,
        )
        return 2
    # read again by a worker that -D re-executes as `python -m celery ...`
    os.environ[ENV_RELIABLE_DEFAULTS] = "1"
    workdir = next(
        (
            global_args[i + 1]
            for i, a in enumerate(global_args)
            if a == "--workdir" and i + 1 < len(global_args)
        ),
        None,
    )
    if workdir:
        os.chdir(workdir)
    try:
        app = load_app(name, set_current=False)
        applied = prepare(app)
    except ConfigurationError as exc:
        print(f"graph-worker: {exc}", file=sys.stderr)
        return 2
    if applied:
        logger.info("celery-graph: applied defaults %s", applied)
    args = [*global_args, "worker", *worker_args]
    sys.argv = [sys.argv[0], *args]  # what `celery worker -D` re-executes
    try:
        return int(
            celery_command.main(
                args=args,
                prog_name="graph-worker",
                auto_envvar_prefix="CELERY",
                standalone_mode=False,
            )
            or 0
        )
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        return 1


__all__ = [
    "WORKER_OPTIONS",
    "apply_defaults",
    "check_agreement",
    "install",
    "main",
    "prepare",
    "split_argv",
    "user_set",
]
