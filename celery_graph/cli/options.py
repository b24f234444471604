"""What the two groups need before any command is loaded: the program's name, the exit
statuses, the options every command shares (``-A``, ``--redis-url``, ``--key-prefix``)
and where they keep their values, the examples under a help text. Only click: ``celery
worker`` loads the ``workflow`` group with every start (Celery's ``celery.commands``
entry point), and the commands load when one of them runs (``groups.py``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click

PROG = "celery-graph"
COMPLETE_VAR = "_CELERY_GRAPH_COMPLETE"  # click's shell completion (its default name)

EXIT_FAILED = 1  # a run failed or was cancelled; cancel refused
EXIT_USAGE = 2  # bad input: unknown run id, Redis down, unimportable target

# Where the -A / --redis-url / --key-prefix options leave their values: click's
# ``ctx.meta`` is shared by the whole command line, so a value given before the command
# (``celery-graph -A proj runs``) and one given after it (``runs -A proj``) land in the
# same place, the later one winning.
META = "celery_graph.cli"

APP_HELP = "Celery app to use, like `celery -A`: module or module:attr"
REDIS_HELP = (
    "Redis holding graph state (default: app.conf.graph_redis_url, "
    "$CELERY_GRAPH_REDIS_URL, or the app's Redis broker)"
)
PREFIX_HELP = (
    "key prefix of graph state (default: app.conf.graph_key_prefix, "
    "$CELERY_GRAPH_KEY_PREFIX, or 'celery_graph')"
)


def remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Option callback: keep a given value of a common option in the context's meta."""
    if value is not None and param.name:
        ctx.meta.setdefault(META, {})[param.name] = value
    return value


def given(ctx: click.Context, name: str) -> Any:
    return ctx.meta.get(META, {}).get(name)


def app_option(**extra: Any) -> Callable[[Any], Any]:
    return click.option(
        "-A",
        "--app",
        metavar="APP",
        expose_value=False,
        callback=remember,
        help=APP_HELP,
        **extra,
    )


def settings_options(f: Any) -> Any:
    f = click.option(
        "--key-prefix", metavar="PREFIX", expose_value=False, callback=remember, help=PREFIX_HELP
    )(f)
    return click.option(
        "--redis-url", metavar="URL", expose_value=False, callback=remember, help=REDIS_HELP
    )(f)


def common_options(f: Any) -> Any:
    return app_option()(settings_options(f))


def examples(*lines: str) -> str:
    # "\b" keeps click from re-wrapping the paragraph
    return "\b\nexamples:\n" + "\n".join(f"  {line}" for line in lines)


def quiet_stdout() -> None:
    """After a closed pipe (``celery-graph runs | head -1``): send what is left of
    stdout nowhere, so neither this command nor the interpreter's exit complains."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
