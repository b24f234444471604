"""What every command shares: the common options, the error and closed-pipe handling
around a command's body, run id completion, the examples under each command's help."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from ..errors import CeleryGraphError
from .support import EXIT_FAILED, EXIT_USAGE, app_for, configure, remember

PROG = "celery-graph"
COMPLETE_VAR = "_CELERY_GRAPH_COMPLETE"  # click's shell completion (its default name)

# -- options every command shares -----------------------------------------------------

APP_HELP = "Celery app to use, like `celery -A`: module or module:attr"
REDIS_HELP = (
    "Redis holding graph state (default: app.conf.graph_redis_url, "
    "$CELERY_GRAPH_REDIS_URL, or the app's Redis broker)"
)
PREFIX_HELP = (
    "key prefix of graph state (default: app.conf.graph_key_prefix, "
    "$CELERY_GRAPH_KEY_PREFIX, or 'celery_graph')"
)


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


def guarded(fn: Callable[..., int | None]) -> Callable[..., None]:
    """Run a command body: one error line and exit 2 for bad input, quiet on a closed
    pipe, the body's return value as the exit status."""

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> None:
        ctx = click.get_current_context()
        try:
            code = fn(*args, **kwargs) or 0
            sys.stdout.flush()  # a closed pipe shows here, not at the interpreter's exit
        except CeleryGraphError as exc:  # UsageError included
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            click.echo(f"{PROG}: error: {message}", err=True)
            code = EXIT_USAGE
        except BrokenPipeError:
            quiet_stdout()
            code = EXIT_FAILED
        except KeyboardInterrupt:
            click.echo("\ninterrupted (the run, if any, goes on)", err=True)
            code = 130
        ctx.exit(code)

    return command


def complete_run_id(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[click.shell_completion.CompletionItem]:
    """Run ids of recent runs, for shell completion; nothing when Redis is not there."""
    try:
        app = app_for(ctx)
        ids = configure(ctx, app).runs.recent(50)
    except Exception:
        return []
    return [click.shell_completion.CompletionItem(i) for i in ids if i.startswith(incomplete)]


json_option = click.option("--json", "as_json", is_flag=True, help="print one JSON document")
run_id_argument = click.argument("run_id", metavar="RUN_ID", shell_complete=complete_run_id)
