"""``python -m tests.support.launch MODULE ARGS...``: ``python -m MODULE ARGS...`` (``celery``,
``celery_graph.worker``) with the ``celery`` command's sub-commands from packages other
than celery-graph left out.

Celery imports every ``celery.commands`` entry point each time its command starts, a
worker included. The test environment has Flower installed, whose ``celery flower``
imports Tornado, prometheus_client and redis-py's OpenTelemetry hooks: about 0.27
CPU-seconds in each of the hundreds of worker processes the tests start. The worker
starters (``processes.worker_argv``) start workers through this module, so a test's
worker is what a user without Flower gets; celery-graph's own ``workflow`` command
still loads, as it does for every user. Commands the tests run as a user types them
(``processes.CELERY``, ``GRAPH_WORKER``, ``celery flower``) do not come here."""

from __future__ import annotations

import runpy
import sys
from importlib import metadata
from typing import Any

_entry_points = metadata.entry_points


def celery_graph_commands_only(*args: Any, **params: Any) -> Any:
    """``importlib.metadata.entry_points``, the ``celery.commands`` group keeping only
    celery-graph's."""
    found = _entry_points(*args, **params)
    if params.get("group") != "celery.commands":
        return found
    return metadata.EntryPoints(ep for ep in found if ep.value.startswith("celery_graph."))


def main() -> None:
    metadata.entry_points = celery_graph_commands_only  # before Celery's CLI imports it
    module = sys.argv.pop(1)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
