"""A worker embedded in a process (celery.contrib.testing.worker.start_worker, or
WorkController run in a thread) stops the way Celery stops it there: by the terminate
path (``state.should_terminate``), which sends no ``worker_shutdown``. celery-graph's
threads (heartbeat, reconciler, revokes) stop with it and the worker leaves the registry;
left running, they kept a stopped worker registered as live (so the nodes it held looked
held) and swept a Redis that may be gone.

The worker runs in a Python subprocess of its own: ``should_terminate`` is the whole
process's, so stopping an embedded worker in the test process would stop the session's
worker too."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.support.processes import run_py, subprocess_env

pytestmark = pytest.mark.slow  # a Python subprocess

SCRIPT = """
import json, sys, threading, time
from celery.contrib.testing.worker import start_worker
from celery_graph.worker.heartbeat import live_workers
from tests.support.apps import make_app

STEP_THREADS = ("celery-graph-heartbeat", "celery-graph-reconciler", "celery-graph-revokes")
def step_threads():
    return sorted(t.name for t in threading.enumerate() if t.name in STEP_THREADS)

app = make_app(sys.argv[1], None, "cgtest-embedded", sys.argv[2])
import tests.tasks  # the graph tasks, on the app
with start_worker(app, pool="threads", concurrency=1, perform_ping_check=False,
                  loglevel="WARNING") as w:
    deadline = time.monotonic() + 10
    while not live_workers(app) and time.monotonic() < deadline:
        time.sleep(0.05)
    during = {"threads": step_threads(), "live": [x.hostname for x in live_workers(app)]}
deadline = time.monotonic() + 5
while step_threads() and time.monotonic() < deadline:
    time.sleep(0.05)
after = {"threads": step_threads(), "live": [x.hostname for x in live_workers(app)]}
print(json.dumps({"during": during, "after": after}))
"""


def test_an_embedded_worker_that_stops_stops_its_threads_and_leaves_the_registry(redis_url):
    session = f"embedded-{uuid.uuid4().hex[:8]}"  # its own queue and key prefix
    done = run_py(["-c", SCRIPT, redis_url, session], subprocess_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["during"]["threads"] == sorted(
        ["celery-graph-heartbeat", "celery-graph-reconciler", "celery-graph-revokes"]
    )
    assert len(seen["during"]["live"]) == 1, seen
    assert seen["after"] == {"threads": [], "live": []}, seen
