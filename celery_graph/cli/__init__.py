"""The ``celery-graph`` command, and the ``workflow`` sub-command of ``celery``.

``groups``: the two click groups (``celery_graph`` for the console script, ``workflow``
for Celery's ``celery.commands`` entry point) and ``main``; each loads a command's
module when that command is used. ``commands``, ``schedules``, ``dashboard``: the click
commands. ``output``: how they print (tables, the status summary, JSON). ``support``:
the app, the settings, flows, runs and inputs they work on. See docs/cli.md.

Importing this package loads only the groups (``celery worker`` does, at every start);
``wait_for`` and ``progress_line`` load their modules on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .groups import celery_graph, main, workflow
from .options import EXIT_FAILED, EXIT_USAGE

if TYPE_CHECKING:
    from .commands import wait_for
    from .output import progress_line

__all__ = [
    "EXIT_FAILED",
    "EXIT_USAGE",
    "UsageError",
    "celery_graph",
    "main",
    "progress_line",
    "wait_for",
    "workflow",
]

_LAZY = {"wait_for": "commands", "progress_line": "output"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
