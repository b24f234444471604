"""Per-worker metrics: counted in prefork children, kept in Redis, served by the main
process at /metrics, with a queue-depth gauge."""

from __future__ import annotations

import os
import urllib.request
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from celery_graph.dispatch import QueueDepth
from celery_graph.errors import RunFailed
from celery_graph.state import state_for
from celery_graph.testing import free_port
from celery_graph.worker.heartbeat import live_workers
from tests.apps import ops_tasks as t
from tests.support.apps import build_app
from tests.support.helpers import wait_for
from tests.support.processes import start_worker

PREFIX = f"cgops:metrics:{uuid.uuid4().hex[:6]}"


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.mark.slow
def test_metrics_endpoint_counts_tasks_across_pool_processes(redis_url, tmp_path):
    queue = f"cgops-metrics-{uuid.uuid4().hex[:8]}"
    port = free_port()
    app = build_app(redis_url, queue, key_prefix=PREFIX)
    w = start_worker(
        tmp_path,
        "met1",
        broker_url=redis_url,
        queue=queue,
        prefix=PREFIX,
        extra_args=["--metrics-port", str(port)],
        concurrency=1,
    )
    try:
        host = wait_for(lambda: live_workers(app), 20, f"registry entry\n{w.log()}")[0].hostname
        worker = (("worker", host),)
        tag = uuid.uuid4().hex[:8]
        flow = (
            t.ops_first.bind(tag=tag)
            >> t.ops_long.bind(tag=tag, delay=0.2)
            >> t.ops_last.bind(tag=tag)
        )
        assert flow.submit(app=app).get(timeout=20) == "ops_last<-ops_long"
        with pytest.raises(RunFailed):
            t.ops_fail.bind(tag=tag).submit(app=app).get(timeout=20)

        # the pool process counts a task before the main process hears it is done, so
        # wait for both numbers to settle
        m = wait_for(
            lambda: (
                (s := scrape(port)).get(("celery_graph_worker_tasks_processed_total", worker)) == 4
                and s[("celery_graph_worker_tasks_in_flight", worker)] == 0
                and s
            ),
            10,
            "4 processed tasks, none in flight",
        )
        assert m[("celery_graph_worker_tasks_succeeded_total", worker)] == 3
        assert m[("celery_graph_worker_tasks_failed_total", worker)] == 1, m
        assert m[("celery_graph_worker_task_runtime_seconds_total", worker)] >= 0.2
        durations = [
            v
            for (name, labels), v in m.items()
            if name == "celery_graph_task_duration_seconds_count"
        ]
        assert sum(durations) == 4  # the histogram replaces the mean gauge
        assert m[("celery_graph_worker_uptime_seconds", worker)] > 0
        assert m[("celery_graph_queue_depth", (("queue", queue),))] == 0

        # One long node holds the only pool slot (prefetch 1): three more runs wait in
        # the queue, which is what an autoscaler reads.
        tag = uuid.uuid4().hex[:8]
        slow = t.ops_first.bind(tag=tag) >> t.ops_long.bind(tag=tag, delay=3)
        busy = slow.submit(app=app)
        client = state_for(app).client
        wait_for(
            lambda: ["start", "ops_long"] in [e[:2] for e in t.events(client, tag)],
            10,
            "the long node to start",
        )
        waiting = [t.ops_first.bind(tag=None).submit(app=app) for _ in range(3)]
        m = wait_for(
            lambda: (
                (s := scrape(port)).get(("celery_graph_queue_depth", (("queue", queue),))) == 3
                and s
            ),
            5,
            "queue depth 3",
        )
        assert m[("celery_graph_worker_tasks_in_flight", worker)] == 1
        busy.get(timeout=20)
        for r in waiting:
            r.get(timeout=20)
        assert scrape(port)[("celery_graph_queue_depth", (("queue", queue),))] == 0
    finally:
        w.stop()


def test_queue_depth_counts_every_priority_list(redis_url):
    queue = f"cgops-depth-{uuid.uuid4().hex[:8]}"  # nobody consumes it
    for priority in (False, True):
        app = build_app(redis_url, queue + str(priority), priority=priority)
        for p in (0, 5, 9):
            app.send_task("cgops.nothing", queue=queue + str(priority), priority=p)
        assert QueueDepth(app).depths([queue + str(priority)]) == {queue + str(priority): 3}


def test_queue_depth_on_rabbitmq_uses_a_passive_declare(redis_url):
    from tests.test_routing import RABBITMQ, rabbitmq_available

    if not rabbitmq_available():
        pytest.skip("no RabbitMQ at 127.0.0.1:5672")
    import kombu

    queue = f"cgops-depth-amqp-{uuid.uuid4().hex[:8]}"
    app = build_app(RABBITMQ, queue, graph_redis_url=redis_url)
    try:
        depth = QueueDepth(app)
        assert depth.depths([queue]) == {queue: 0}  # not declared yet: empty, no error
        for _ in range(2):
            app.send_task("cgops.nothing", queue=queue)
        assert wait_for(lambda: depth.depths([queue]) == {queue: 2}, 5, "depth 2")
    finally:
        with kombu.Connection(RABBITMQ) as conn:
            conn.default_channel.queue_delete(queue)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads, on purpose
def test_counts_are_written_in_batches_and_a_forked_child_keeps_none_of_its_parents(
    redis_url,
):
    """Task counts wait in the process's memory and go to Redis in one write; a pool
    process forked while the parent's writer holds the lock counts on its own (a copied
    lock held by a thread that does not exist in the child would hang every task)."""
    import os

    from celery_graph.worker.metrics import Tally, tally

    app = build_app(redis_url, f"cgops-fork-{uuid.uuid4().hex[:6]}", key_prefix=f"{PREFIX}:fork")
    state = state_for(app)
    host = f"fork-{uuid.uuid4().hex[:6]}@test"
    # a tally of its own, with no writer thread (this process's writes every
    # FLUSH_SECONDS, whenever its timer runs out: it flushed between these lines in CI)
    counts = Tally()
    counts._pid = os.getpid()
    for _ in range(3):
        counts.add(state, host, {"processed": 1}, {"runtime_total": 0.5})
    assert state.workers.counters(host) == {}  # nothing written per task
    counts.flush()
    assert state.workers.counters(host) == {"processed": 3.0, "runtime_total": 1.5}
    # the process's own tally, reset in a forked child by its at-fork hook
    tally.add(state, host, {"processed": 1}, {})
    with tally._lock:  # as if the parent's writer thread were writing when it forked
        pid = os.fork()
        if pid == 0:  # the child: a free lock, no counts of the parent's
            ok = tally._lock.acquire(timeout=2) and not tally._pending
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    tally.flush()
    assert state.workers.counters(host) == {"processed": 4.0, "runtime_total": 1.5}


def test_a_flush_returns_once_the_counts_another_flush_took_are_in_redis(redis_url, monkeypatch):
    """The writer thread takes the pending counts and writes them outside the lock; a
    flush meanwhile (the one at exit, or a test's) waits for that write instead of
    finding nothing and returning: at exit the process would end with the counts still
    on their way (the batched-counts test read 3 for 4 in CI this way)."""
    import threading

    from celery_graph.worker.metrics import Tally

    app = build_app(redis_url, f"cgops-flush-{uuid.uuid4().hex[:6]}", key_prefix=f"{PREFIX}:flush")
    state = state_for(app)
    host = f"flush-{uuid.uuid4().hex[:6]}@test"
    writing, release = threading.Event(), threading.Event()
    real = state.workers.add_task_counts

    def slow_write(*args, **kwargs):  # the real write, held until the test lets it go
        writing.set()
        release.wait(10)
        real(*args, **kwargs)

    monkeypatch.setattr(state.workers, "add_task_counts", slow_write)
    counts = Tally()
    counts._pid = os.getpid()  # no writer thread of its own: the test plays it
    for _ in range(3):
        counts.add(state, host, {"processed": 1}, {})
    background = threading.Thread(target=counts.flush)
    background.start()
    assert writing.wait(10)
    threading.Timer(0.3, release.set).start()
    counts.flush()
    try:
        assert state.workers.counters(host) == {"processed": 3.0}
    finally:
        release.set()
        background.join(10)


def test_a_private_server_s_cleanup_writes_this_process_s_counts_first(monkeypatch):
    """PrivateRedis.cleanup flushes the counts the process holds before it stops the
    server (a benchmark's exit warned that the server was gone)."""
    from celery_graph.testing import PrivateRedis
    from celery_graph.worker.metrics import tally

    server = PrivateRedis().start()
    app = build_app(server.url, f"cgops-clean-{uuid.uuid4().hex[:6]}", key_prefix=f"{PREFIX}:c")
    state = state_for(app)
    host = f"clean-{uuid.uuid4().hex[:6]}@test"
    seen = []
    stop = server.stop

    def counted_then_stopped(**kwargs):
        seen.append(state.workers.counters(host))
        stop(**kwargs)

    monkeypatch.setattr(server, "stop", counted_then_stopped)
    tally.add(state, host, {"processed": 1}, {})
    server.cleanup()
    assert seen == [{"processed": 1.0}]


def test_a_task_counts_in_every_bucket_at_or_above_its_duration() -> None:
    """The histogram fields one task adds (named once per series, state/workers.py)."""
    from celery_graph.state import task_counts

    whole, floats = task_counts(
        "t", "q", "succeeded", 0.03, (0.01, 0.05, 1.0), waited=2.0, wait_buckets=(1.0, 5.0)
    )
    assert whole == {
        "processed": 1,
        "succeeded": 1,
        "n|t|q|succeeded": 1,
        "b|t|q|0.05": 1,
        "b|t|q|1.0": 1,
        "b|t|q|+Inf": 1,
        "wb|q|5.0": 1,
        "wb|q|+Inf": 1,
    }
    assert floats == {"runtime_total": 0.03, "s|t|q": 0.03, "ws|q": 2.0}
    again, _ = task_counts("t", "q", "failed", 2.0, [0.01, 0.05, 1.0])
    assert again == {"processed": 1, "failed": 1, "n|t|q|failed": 1, "b|t|q|+Inf": 1}


def test_counts_that_cannot_reach_the_graph_redis_log_one_line(caplog):
    """A flush while the graph Redis is away (as at a process's exit after its server
    stopped) logs why on one line, no traceback: it used to print the whole chain."""
    import logging
    import os

    from celery_graph.worker.metrics import Tally
    from tests.support.apps import new_app

    app = new_app("cgtest_metrics_away", None, graph_redis_url=f"redis://127.0.0.1:{free_port()}/0")
    counts = Tally()
    counts._pid = os.getpid()  # no writer thread, no exit hook: this test flushes
    counts.add(state_for(app), "w@host", {"processed": 1}, {"runtime_total": 0.5})
    with caplog.at_level(logging.WARNING, logger="celery_graph"):
        counts.flush()
    [record] = [r for r in caplog.records if "could not record task metrics" in r.message]
    assert "Redis unreachable" in record.message and record.exc_info is None
