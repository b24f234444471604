"""The end of a run, in one place.

A run ends in one of two ways: its last sink completes (``complete.lua`` ends it as
succeeded), or something ends it as failed or cancelled (:func:`end_run`: a node failing,
a group policy broken, a deadline, a cancel, a submission the broker refused). Either way
:func:`after_run` follows: what waits on the run continues, reading the run's outcome from
state, on whichever process ended it.
"""

from __future__ import annotations

import logging
from typing import Any

from .dispatch import continue_canvas
from .model import GraphSpec
from .state import State

logger = logging.getLogger("celery_graph")


def end_run(
    app: Any,
    state: State,
    run_id: str,
    status: str,
    *,
    spec: GraphSpec | None = None,
    node_id: str = "",
    error: str = "",
) -> bool:
    """End a running run as ``status`` ("failed" or "cancelled") with ``error`` (an error
    record), then run the end-of-run hooks. True if this call ended it."""
    ended = state.scripts.finish(spec, run_id, status, node_id, error)
    if ended:
        after_run(app, state, run_id)
    return ended


def after_run(app: Any, state: State, run_id: str) -> None:
    """Hooks for a run that just ended: a Celery canvas waiting on it continues."""
    try:
        request = state.runs.continuation(run_id)
        if request is None:
            return
        outcome = state.runs.outcome(run_id)
        if outcome is not None:
            continue_canvas(app, request, outcome)
    except Exception:
        logger.exception("celery-graph: could not continue the canvas of run %s", run_id)
