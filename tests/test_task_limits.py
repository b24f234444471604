"""``@task(graph_concurrency=N)`` and ``@task(graph_rate_limit=...)`` across every worker:
real workers, nodes of several runs at once, a worker SIGKILLed while it holds a slot
(docs/concurrency.md)."""

from __future__ import annotations

import pytest

from celery_graph import task
from celery_graph.errors import GraphDefinitionError
from celery_graph.executor.gate import parse_rate
from celery_graph.state import state_for
from tests.support.helpers import most_at_once, wait_for
from tests.support.processes import Workers
from tests.tasks import exclusive, paced, read_trace


def five_exclusive(tag: str, seconds: float = 0.1):
    return (
        exclusive.bind(id="e1", seconds=seconds)
        | exclusive.bind(id="e2", seconds=seconds)
        | (exclusive.bind(id="e3", seconds=seconds))
        | exclusive.bind(id="e4", seconds=seconds)
        | exclusive.bind(id="e5", seconds=seconds)
    )


def test_graph_concurrency_one_on_a_task_of_20_nodes_in_4_runs_never_overlaps(app, tag):
    flow = five_exclusive(tag)
    runs = [flow.apply_async(tag=tag) for _ in range(4)]
    for run in runs:
        assert set(run.get(timeout=120).values()) == {"x"}
    trace = read_trace(tag)
    assert trace.count("start:x") == 20 and trace.count("end:x") == 20, trace
    assert most_at_once(trace) == 1, trace
    limits = state_for(app).task_limits
    # the last node gives its slot back just after its run ended
    wait_for(lambda: limits.counts(exclusive.task_name) == (0, 0), timeout=10, what="slots")
    # each node ran once: waiting nodes held no attempt
    assert all(n.attempts == 1 for r in runs for n in r.status().nodes.values())


def test_graph_rate_limit_spaces_the_starts_across_workers(app, tag):
    flow = (
        paced.bind(id="p1")
        | paced.bind(id="p2")
        | paced.bind(id="p3")
        | paced.bind(id="p4")
        | paced.bind(id="p5")
    )
    runs = [flow.apply_async(tag=tag) for _ in range(2)]
    for run in runs:
        run.get(timeout=60)
    times = sorted(float(e.split(":", 1)[1]) for e in read_trace(tag))
    assert len(times) == 10
    # 5/s: starts granted 0.2 s apart on the server's clock (each node notes its time a
    # little after its grant, so single gaps jitter): 5 starts never fit in 0.8 s
    assert times[-1] - times[0] >= 1.7, times
    windows = [b - a for a, b in zip(times, times[5:])]
    assert min(windows) >= 0.9, windows


def test_bad_limits_are_errors_at_declaration():
    with pytest.raises(GraphDefinitionError, match="graph_concurrency=0"):
        task(graph_concurrency=0)(lambda: 1)
    with pytest.raises(GraphDefinitionError, match="graph_rate_limit='fast'"):
        task(graph_rate_limit="fast")(lambda: 1)
    assert parse_rate("100/m") == pytest.approx(0.6)
    assert parse_rate("2/s") == 0.5 and parse_rate("1/h") == 3600


def test_the_slot_of_a_sigkilled_worker_is_freed_and_the_waiting_node_runs(
    short_lease_workers, tag
):
    workers = short_lease_workers
    workers.start("a")
    workers.start("b")
    flow = exclusive.bind(id="long", seconds=3.0) | exclusive.bind(id="other", seconds=0.1)
    run = flow.submit({"tag": tag}, app=workers.app)
    status = wait_for(
        lambda: (s := run.status()) and any(n.state == "running" for n in s.nodes.values()) and s,
        timeout=30,
        what="a node to start",
    )
    victim = next(n.worker for n in status.nodes.values() if n.state == "running")
    workers.kill(victim)
    assert set(run.get(timeout=90).values()) == {"x"}
    trace = read_trace(tag)
    # the killed node ran again; the other one waited for the slot, never beside it
    assert trace.count("end:x") == 2, trace
    limits = state_for(workers.app).task_limits
    wait_for(lambda: limits.counts(exclusive.task_name) == (0, 0), timeout=30, what="slots")


def test_waiting_nodes_are_sent_once_and_woken_once_not_resent_every_queued_lease(
    redis_url: str, tag: str
) -> None:
    """Four nodes of a graph_concurrency=1 task at once, each holding its slot 2.5 s: the
    last waits about 7.5 s, several queued leases (2 s). Each node's message is delivered
    when the run sends it, and a waiting one once more when a slot frees for it (the
    oldest first): the reconciler does not send waiting nodes again every lease."""
    w = Workers(redis_url)
    w.extra_env.update(
        CELERY_GRAPH_QUEUED_LEASE="2",
        CELERY_GRAPH_RUNNING_LEASE="2",
        CELERY_GRAPH_RECONCILE_INTERVAL="0.5",
        CGTEST_TRACE_DELIVERIES="1",
    )
    w.app.conf.update(graph_queued_lease=2, graph_running_lease=2)  # the roots' leases
    try:
        w.start("a")
        w.start("b")
        flow = (
            exclusive.bind(id="x1", tag=tag, seconds=2.5)
            | exclusive.bind(id="x2", tag=tag, seconds=2.5)
            | exclusive.bind(id="x3", tag=tag, seconds=2.5)
            | exclusive.bind(id="x4", tag=tag, seconds=2.5)
        )
        run = flow.submit({}, app=w.app)  # tag bound: in each message, for its trace
        assert set(run.get(timeout=120).values()) == {"x"}
        trace = read_trace(tag)
        marks = [e for e in trace if e in ("start:x", "end:x")]
        assert marks.count("end:x") == 4 and most_at_once(marks) == 1, trace
        delivered = [e for e in trace if e.startswith("delivered:")]
        # 4 first deliveries, then 3 wakes (the node that went first never waited)
        assert len(delivered) == 7, trace
        assert all(n.attempts == 1 for n in run.status().nodes.values())
    finally:
        w.stop()
        w.app.connection_for_write().default_channel.queue_purge(w.queue)
