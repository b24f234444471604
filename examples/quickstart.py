"""Quick start: an ETL graph on a real Celery worker.

    make demo                                   # private Redis, worker, run, clean up
    CELERY_GRAPH_REDIS_URL=redis://... python examples/quickstart.py

Run as a script, it starts a `graph-worker` (celery-graph's `celery worker`) for this
module in a subprocess, submits the graph, prints the result and each node's state, and
stops the worker with SIGTERM (a graceful shutdown).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from celery import Celery

from celery_graph import task
from celery_graph.cli import wait_for

REDIS_URL = os.environ.get("CELERY_GRAPH_REDIS_URL", "redis://localhost:6379/0")

app = Celery("quickstart", broker=REDIS_URL)
app.conf.graph_key_prefix = "quickstart"
app.conf.task_default_queue = "quickstart"


@task
def extract():
    return [1, 2, 3]


@task(max_retries=3)
def transform(extract):
    return [x * 10 for x in extract]


@task
def audit(extract):
    return len(extract)


@task
def load(transform, audit):
    return {"rows": transform, "count": audit}


flow = extract >> (transform | audit) >> load


def start_worker() -> subprocess.Popen:
    here = Path(__file__).resolve().parent
    path = os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    cmd = [
        sys.executable,
        "-m",
        "celery_graph.worker",
        "--quiet",
        "-A",
        "quickstart",
        "-c",
        "2",
        "-n",
        "quickstart@%h",
        "-l",
        "WARNING",
        "--without-mingle",
        "--without-gossip",
        "--graceful-timeout",
        "10",
    ]
    proc = subprocess.Popen(cmd, cwd=here, env=env)
    deadline = time.monotonic() + 60
    while not app.control.ping(timeout=0.5):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("the worker did not start; is Redis reachable at " + REDIS_URL)
    return proc


def main() -> None:
    worker = start_worker()
    try:
        run = flow.apply_async()
        print(f"run {run.id} submitted")
        # the progress display of `celery-graph run --wait`
        wait_for(run, 30, sys.stdout, sys.stdout)  # prints the progress, then the result
        for node, state in run.status().nodes.items():
            print(f"  {node:<10} {state.state:<10} on {state.worker}")
    finally:
        worker.terminate()
        worker.wait(30)


if __name__ == "__main__":
    main()
