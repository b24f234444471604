"""A worker embedded in a process (celery.contrib.testing.worker.start_worker, or
WorkController run in a thread) stops the way Celery stops it there: by the terminate
path (``state.should_terminate``), which sends no ``worker_shutdown``. celery-graph's
threads (heartbeat, reconciler, revokes) stop with it and the worker leaves the registry;
left running, they kept a stopped worker registered as live (so the nodes it held looked
held) and swept a Redis that may be gone."""

from __future__ import annotations

import threading
import uuid

from celery.contrib.testing.worker import start_worker

from celery_graph.worker.heartbeat import live_workers
from tests.support.fixtures import SESSION, started_app
from tests.support.helpers import wait_for


def graph_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("celery-graph"))


def test_an_embedded_worker_that_stops_stops_its_threads_and_leaves_the_registry(redis_url):
    tag = uuid.uuid4().hex[:8]
    app = started_app(
        redis_url,
        None,
        f"cgtest-embedded-{tag}",
        task_default_queue=f"cgtest-{SESSION}-embedded-{tag}",
        graph_key_prefix=f"cgtest:{SESSION}:embedded-{tag}",
    )
    before = graph_threads()
    with start_worker(
        app, pool="threads", concurrency=1, perform_ping_check=False, loglevel="WARNING"
    ) as w:
        hostname = w.hostname
        wait_for(
            lambda: [x for x in live_workers(app) if x.hostname == hostname],
            10,
            "the embedded worker in the registry",
        )
        assert {"celery-graph-heartbeat", "celery-graph-reconciler"} <= set(graph_threads())
    wait_for(lambda: graph_threads() == before, 10, f"its threads to stop: {graph_threads()}")
    assert [x.hostname for x in live_workers(app)] == []
