"""The two groups that hold the commands: ``celery-graph`` (the console script, with its
own ``-A``) and ``workflow`` (``celery -A APP workflow``, through Celery's
``celery.commands`` entry point, where the app is Celery's own ``-A``)."""

from __future__ import annotations

import copy
import importlib
import os
import platform
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

import click

from .options import (
    COMPLETE_VAR,
    EXIT_FAILED,
    EXIT_USAGE,
    PROG,
    app_option,
    examples,
    quiet_stdout,
    settings_options,
)


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


# Every command: its name, then where it lives (``module:attribute`` in this package). A
# group imports a command's module when that command runs, completes or is listed in a
# help text: `celery worker` loads the `workflow` group at every start (Celery's
# `celery.commands` entry point) and `celery-graph status` needs neither the dashboard
# nor the drawings.
COMMANDS: dict[str, str] = {
    "run": "commands:run_command",
    "status": "commands:status_command",
    "runs": "commands:runs_command",
    "cancel": "commands:cancel_command",
    "signal": "commands:signal_command",
    "resume": "commands:resume_command",
    "reconcile": "commands:reconcile_command",
    "workers": "commands:workers_command",
    "show": "commands:show_command",
    "schedules": "schedules:schedules_command",
    "schedule": "schedules:schedule_command",
    "ui": "dashboard:ui_command",
}


def load_command(name: str) -> click.Command:
    """The click command ``name`` of :data:`COMMANDS`, its module imported now."""
    module, _, attribute = COMMANDS[name].partition(":")
    command = getattr(importlib.import_module(f"{__package__}.{module}"), attribute)
    assert isinstance(command, click.Command) and command.name == name, COMMANDS[name]
    return command


def without_app_option(command: click.Command) -> click.Command:
    """A copy of ``command`` whose app comes from ``celery -A`` (Celery itself reports a
    sub-command's ``-A`` as misplaced)."""
    clone = copy.copy(command)
    clone.params = [p for p in command.params if p.name != "app"]
    return clone


class CommandGroup(click.Group):
    """A click group over :data:`COMMANDS`, each loaded on first use; ``adapt`` makes
    the group's own copy of a command (the ``workflow`` group drops its ``-A``)."""

    def __init__(
        self,
        *args: Any,
        adapt: Callable[[click.Command], click.Command] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.adapt = adapt

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})  # as click's own group lists them

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            command = load_command(cmd_name)
            self.add_command(self.adapt(command) if self.adapt else command)
        return super().get_command(ctx, cmd_name)


def print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_line())
        ctx.exit(0)


# -- the two groups -------------------------------------------------------------------


@click.group(
    PROG,
    cls=CommandGroup,
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
    cls=CommandGroup,
    adapt=without_app_option,
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
