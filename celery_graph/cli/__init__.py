"""The ``celery-graph`` command, and the ``workflow`` sub-command of ``celery``.

``commands``: the click commands and the two groups that hold them (``celery_graph`` for
the console script, ``workflow`` for Celery's ``celery.commands`` entry point).
``output``: how they print (tables, the status summary, JSON). ``support``: the app, the
settings, flows, runs and inputs they work on. See docs/cli.md.
"""

from ..errors import UsageError
from .commands import wait_for
from .groups import celery_graph, main, workflow
from .output import progress_line
from .support import EXIT_FAILED, EXIT_USAGE

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
