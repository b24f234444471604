"""Old import path (it holds no test), kept for tests written against it: the subprocess
helpers are in tests/support/processes.py."""

from tests.support import ROOT
from tests.support.processes import (
    WORKER_OPTIONS,
    base_env,
    celery_worker,
    cli,
    graph_worker,
    graph_worker_available,
    redis_db_url,
    run_py,
)

__all__ = [
    "ROOT",
    "WORKER_OPTIONS",
    "base_env",
    "celery_worker",
    "cli",
    "graph_worker",
    "graph_worker_available",
    "redis_db_url",
    "run_py",
]
