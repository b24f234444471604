"""What every command shares beyond its options (``options.py``): the error and
closed-pipe handling around a command's body, run id completion, ``--json`` and the run
id argument."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from ..errors import CeleryGraphError
from .options import EXIT_FAILED, EXIT_USAGE, PROG, quiet_stdout
from .support import app_for, configure


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
