"""The schedule commands: ``schedules`` (what each ``schedule()`` entry did) and
``schedule pause|resume NAME``."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..errors import UsageError
from ..state import state_for
from .base import guarded, json_option
from .fmt import table, timestamp
from .options import common_options, examples
from .output import emit_json
from .support import configured_app


@click.command(
    "schedules",
    epilog=examples("celery-graph -A proj.celery schedules", "celery-graph schedules --json"),
)
@json_option
@common_options
@guarded
def schedules_command(as_json: bool) -> int:
    """List the schedules (schedule() entries that fired, or were paused): flow, period,
    overlap policy, last fire, last run, next fire, runs started, skips, paused."""
    app = configured_app()
    state = state_for(app)
    found = state.schedules.all()
    if as_json:
        emit_json(found, sys.stdout)
    elif not found:
        sys.stdout.write(f"no schedules under key prefix {state.keys.prefix!r}\n")
    else:
        print_schedules(found)
    return 0


def print_schedules(found: list[dict[str, Any]]) -> None:
    rows = [
        ["NAME", "FLOW", "EVERY", "OVERLAP", "LAST FIRE", "LAST RUN", "NEXT FIRE", "RUNS", "SKIPS"]
    ]
    for s in found:
        rows.append(
            [
                s["name"] + (" (paused)" if s["paused"] else ""),
                s.get("flow") or "-",
                s.get("every") or "-",
                s.get("overlap") or "-",
                timestamp(s.get("last_fire")),
                s.get("last_run") or "-",
                "-" if s["paused"] else timestamp(s.get("next_fire")),
                str(s["runs"]),
                str(s["skips"]),
            ]
        )
    table(rows, sys.stdout)


@click.command(
    "schedule",
    epilog=examples("celery-graph schedule pause nightly", "celery-graph schedule resume nightly"),
)
@click.argument("action", type=click.Choice(["pause", "resume"]))
@click.argument("name")
@json_option
@common_options
@guarded
def schedule_command(action: str, name: str, as_json: bool) -> int:
    """Pause or resume schedule NAME: while paused, its fires start nothing (each one is
    recorded as a skip); beat keeps firing."""
    app = configured_app()
    state = state_for(app)
    paused = action == "pause"
    if not state.schedules.set_paused(name, paused, state.runs.time()):
        raise UsageError(
            f"no schedule {name!r} under key prefix {state.keys.prefix!r} (a schedule is "
            "known once its entry fired; `celery-graph schedules` lists them)"
        )
    if as_json:
        emit_json({"name": name, "paused": paused}, sys.stdout)
    else:
        sys.stdout.write(f"{'paused' if paused else 'resumed'} schedule {name}\n")
    return 0
