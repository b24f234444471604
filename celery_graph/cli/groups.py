"""The two groups that hold the commands: ``celery-graph`` (the console script, with its
own ``-A``) and ``workflow`` (``celery -A APP workflow``, through Celery's
``celery.commands`` entry point, where the app is Celery's own ``-A``)."""

from __future__ import annotations

import copy
import os
import platform
import sys
from importlib import metadata

import click

from .base import COMPLETE_VAR, PROG, app_option, examples, quiet_stdout, settings_options
from .commands import (
    cancel_command,
    reconcile_command,
    resume_command,
    run_command,
    runs_command,
    show_command,
    signal_command,
    status_command,
    workers_command,
)
from .dashboard import ui_command
from .schedules import schedule_command, schedules_command
from .support import EXIT_FAILED, EXIT_USAGE


def version_line() -> str:
    """``celery-graph 0.1.0 (Celery 5.5.3, Python 3.11.9)``."""

    def of(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "unknown"

    return (
        f"{PROG} {of('celery-graph')} (Celery {of('celery')}, Python {platform.python_version()})"
    )


COMMANDS = (
    run_command,
    status_command,
    runs_command,
    cancel_command,
    signal_command,
    resume_command,
    reconcile_command,
    workers_command,
    show_command,
    schedules_command,
    schedule_command,
    ui_command,
)


def print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_line())
        ctx.exit(0)


# -- the two groups -------------------------------------------------------------------


@click.group(
    PROG,
    epilog=examples(
        "celery-graph run celery_graph.examples.etl:flow --wait",
        "celery-graph run celery_graph.examples.etl:flow --input n=5 --wait --timeout 60",
        "celery-graph runs --redis-url redis://localhost:6379/0",
        "celery-graph status 4bd5d23c52f14f4a96ea8df88b7922ea",
        "celery-graph show celery_graph.examples.etl:flow --format mermaid",
        "celery-graph show 4bd5d23c52f14f4a96ea8df88b7922ea --out run.svg",
        "celery -A proj.celery workflow runs --json",
    ),
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "-V",
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=print_version,
    help="print the versions of celery-graph, Celery and Python, then exit",
)
@app_option(envvar="CELERY_APP")
@settings_options
def celery_graph() -> None:
    """Run and inspect celery-graph workflows.

    The same commands run under Celery's own command as `celery -A APP workflow ...`.

    \b
    Shell completion (bash; zsh_source and fish_source for the others):
      eval "$(_CELERY_GRAPH_COMPLETE=bash_source celery-graph)"
    """


@click.group(
    "workflow",
    epilog=examples(
        "celery -A proj.celery workflow run proj.flows:nightly --wait",
        "celery -A proj.celery workflow runs --json",
        "celery -A proj.celery workflow status 4bd5d23c52f14f4a96ea8df88b7922ea",
        "celery -A proj.celery workflow ui --port 5580",
    ),
    context_settings={"help_option_names": ["-h", "--help"]},
)
@settings_options
def workflow() -> None:
    """celery-graph workflows: run, status, runs, cancel, signal, resume, reconcile, workers,
    show, schedules, schedule, ui. The app is Celery's `-A`."""


def without_app_option(command: click.Command) -> click.Command:
    """A copy of ``command`` whose app comes from ``celery -A`` (Celery itself reports a
    sub-command's ``-A`` as misplaced)."""
    clone = copy.copy(command)
    clone.params = [p for p in command.params if p.name != "app"]
    return clone


for _command in COMMANDS:
    celery_graph.add_command(_command)
    workflow.add_command(without_app_option(_command))


def main(argv: list[str] | None = None) -> int:
    """The ``celery-graph`` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args and not os.environ.get(COMPLETE_VAR):
        ctx = click.Context(celery_graph, info_name=PROG, **celery_graph.context_settings)
        click.echo(celery_graph.get_help(ctx), err=True)
        return EXIT_USAGE
    try:
        code = celery_graph.main(
            args, prog_name=PROG, complete_var=COMPLETE_VAR, standalone_mode=False
        )
    except click.ClickException as exc:  # click's own parsing: unknown option, bad value
        click.echo(f"{PROG}: error: {exc.format_message()}", err=True)
        return EXIT_USAGE
    except click.Abort:
        return 130
    except BrokenPipeError:
        quiet_stdout()
        return EXIT_FAILED
    return int(code or 0)
