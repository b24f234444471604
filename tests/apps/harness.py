"""Old import path, kept for tests written against it: the worker starters are in
tests/support/processes.py."""

from __future__ import annotations

from pathlib import Path

from tests.support import ROOT
from tests.support.helpers import wait_for
from tests.support.processes import (
    GRAPH_WORKER,
    Process,
    graph_worker_help,
    start_worker,
    subprocess_env,
)


def WorkerProcess(
    args: list[str], env: dict[str, str], log_path: Path, cmd: list[str] | None = None
) -> Process:
    """``graph-worker ARGS`` (or ``CMD ARGS``) logging to ``log_path``."""
    return Process([*(cmd or GRAPH_WORKER), *args], env, log=log_path)


__all__ = [
    "GRAPH_WORKER",
    "ROOT",
    "WorkerProcess",
    "graph_worker_help",
    "start_worker",
    "subprocess_env",
    "wait_for",
]
