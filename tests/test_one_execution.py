"""One live execution per node (DESIGN.md invariant 11), with real `celery worker`
processes: a copy of a message that finds its node running under a live lease is turned
away and counts nothing; only a lease that ran out counts as a lost worker; the reconciler
does not reclaim after an outage of its own; messages a live worker holds in its prefetch
buffer are not sent again; a message ahead of the graph state (its release lost with the
graph Redis's data) waits for the state instead of failing the run."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from celery_graph import GraphRun, RunNotFound, RunStateLost
from celery_graph.testing import PrivateRedis
from tests.support.helpers import trace_of, wait_for
from tests.support.processes import Workers
from tests.tasks import slow_item, split, step

pytestmark = pytest.mark.slow  # worker subprocesses killed and restarted

# Short leases and sweeps (defaults: 30 s queued, 15 s running, 2 s sweeps, 5 s beats);
# every delivery of a tagged node message is traced ("delivered:<task id>").
FAST = {
    "CELERY_GRAPH_QUEUED_LEASE": "2",
    "CELERY_GRAPH_RUNNING_LEASE": "3",
    "CELERY_GRAPH_RECONCILE_INTERVAL": "0.5",
    "CELERY_GRAPH_HEARTBEAT_INTERVAL": "0.5",
    "CGTEST_TRACE_DELIVERIES": "1",
}


def _workers(broker_url: str, *, visibility: int | None = None, **kwargs) -> Workers:
    w = Workers(broker_url, **kwargs)
    w.extra_env.update(FAST)
    if visibility is not None:  # the broker restores an unacked message after this long
        w.extra_env["CGTEST_VISIBILITY"] = str(visibility)
    w.app.conf.update(graph_queued_lease=2, graph_running_lease=3)
    return w


@pytest.fixture()
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture()
def persistent_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis(appendonly=True).start()
    try:
        yield server
    finally:
        server.cleanup()


def deliveries(trace: list[str], run_id: str, field: str) -> int:
    return trace.count(f"delivered:{run_id}:{field}")


def test_copies_the_broker_redelivers_while_the_node_runs_are_turned_away(redis_url, rclient, tag):
    """Redis broker, 2 s visibility timeout, prefork: the broker hands the running node's
    message out again every few seconds while a healthy worker runs it. Each copy finds
    the running lease alive and is acknowledged without running; nothing counts as a lost
    worker, so the run does not fail with NodeLost (max_lost 1 here)."""
    w = _workers(redis_url, visibility=2, pool="prefork", concurrency=4)
    w.extra_env["CELERY_GRAPH_MAX_LOST"] = "1"
    try:
        w.start("copies")
        run = step.bind(id="longrun", name="longrun", tag=tag, delay=9).submit(app=w.app)
        assert run.get(timeout=90) == "longrun"
        trace = trace_of(rclient, tag)
        assert trace.count("start:longrun") == 1, trace
        assert deliveries(trace, run.id, "longrun") >= 2, trace  # copies did arrive
        node = run.status().nodes["longrun"]
        assert (node.attempts, node.lost, node.redelivered) == (1, 0, 0)
    finally:
        w.stop()


def test_a_start_delay_longer_than_the_visibility_timeout_runs_the_node_once(
    redis_url, rclient, tag
):
    """A node delayed (``delay_by``) past the broker's visibility timeout: the broker
    restores the waiting message, so two or more copies wait for the same start time;
    one runs, the others find it running (or done) and run nothing."""
    w = _workers(redis_url, visibility=2, pool="threads", concurrency=4)
    try:
        w.start("delayed")
        flow = step.bind(id="first", name="first", tag=tag) >> step.bind(
            id="later", name="later", tag=tag, delay=2
        ).delay_by(6)
        run = flow.submit(app=w.app)
        assert run.get(timeout=90) == "later"
        trace = trace_of(rclient, tag)
        assert trace.count("start:later") == 1, trace
        assert deliveries(trace, run.id, "later") >= 2, trace
        assert run.status().nodes["later"].lost == 0
    finally:
        w.stop()


def test_a_copy_that_comes_while_a_dead_workers_lease_is_alive_is_not_lost(redis_url, rclient, tag):
    """The worker running a node is SIGKILLed with its pool; the broker (2 s visibility)
    hands the message to the other worker while the dead worker's running lease (6 s) is
    still alive. That copy is turned away (nobody can tell yet that the holder died), and
    once the lease runs out the reconciler counts one lost worker and sends the node
    again: it runs again on the live worker and the run succeeds."""
    # one process each, one message each (acks late, prefetch 1): the holder cannot take
    # the broker's copy itself; the other worker waits off the queue until the kill
    w = _workers(redis_url, visibility=2, pool="prefork", concurrency=1, isolate=True)
    w.extra_env["CELERY_GRAPH_RUNNING_LEASE"] = "6"
    try:
        a = w.start("holder")
        b = w.start("other")
        assert w.app.control.cancel_consumer(w.queue, destination=[b], reply=True)
        run = step.bind(id="victim", name="victim", tag=tag, delay=4).submit(app=w.app)
        wait_for(
            lambda: "start:victim" in trace_of(rclient, tag),
            timeout=30,
            what="the node to start on the first worker",
        )
        w.kill(a)  # with its pool: the lease is no longer renewed
        assert w.app.control.add_consumer(w.queue, destination=[b], reply=True)
        assert run.get(timeout=90) == "victim"
        trace = trace_of(rclient, tag)
        assert trace.count("start:victim") == 2, trace  # killed once, then run again
        # the first delivery, the broker's copy (turned away), the reconciler's
        assert deliveries(trace, run.id, "victim") >= 3, trace
        node = run.status().nodes["victim"]
        assert (node.lost, node.redelivered, node.attempts) == (1, 1, 2), node
        assert node.worker == b
    finally:
        w.stop()


def test_the_graph_redis_away_longer_than_a_running_lease_runs_nothing_again(
    persistent_redis, redis_url, rclient, tag
):
    """The graph Redis (AOF) stops for longer than the running lease while a node runs on
    a healthy worker: its renewals fail, and when Redis is back its lease has run out.
    The reconciler's last sweep is older than half a lease, so it extends the running
    leases once instead of counting the worker lost; the worker renews, and the node's
    function runs once."""
    graph = persistent_redis
    w = _workers(redis_url, graph_url=graph.url)
    w.extra_env["CGTEST_TRACE_REDIS_URL"] = redis_url
    try:
        w.start("outage")
        run = step.bind(id="steady", name="steady", tag=tag, delay=10).submit(app=w.app)
        wait_for(
            lambda: "start:steady" in trace_of(rclient, tag),
            timeout=30,
            what="the node to start",
        )
        graph.stop()
        time.sleep(5)  # the outage under test: longer than the 3 s running lease
        graph.start()
        assert GraphRun(run.id, app=w.app).get(timeout=90) == "steady"
        trace = trace_of(rclient, tag)
        assert trace.count("start:steady") == 1, trace
        node = run.status().nodes["steady"]
        assert (node.lost, node.redelivered, node.attempts) == (0, 0, 1), node
    finally:
        w.stop()


def test_messages_a_live_worker_holds_in_its_prefetch_buffer_are_not_sent_again(
    redis_url, rclient, tag
):
    """Celery's stock prefetch (4 per process) on a healthy worker: items of a map wait in
    the worker's buffer longer than the queued lease while the broker queue reads empty.
    The worker's heartbeat lists what it holds, so the reconciler leaves them alone:
    every item runs once and none is sent again."""
    w = _workers(redis_url, pool="prefork", concurrency=2, stock=True)
    # a queued lease of 4 s (the items wait up to 6 s) leaves the heartbeats (every 0.5 s)
    # room on a loaded machine
    w.extra_env["CELERY_GRAPH_QUEUED_LEASE"] = "4"
    try:
        w.start("prefetch")
        flow = split.bind(n=10) >> slow_item.bind(tag=tag, delay=1.5).map("split")
        run = flow.submit(app=w.app)
        assert run.get(timeout=120) == [f"ITEM{i}" for i in range(10)]
        trace = trace_of(rclient, tag)
        starts = {i: trace.count(f"start:item{i}") for i in range(10)}
        assert set(starts.values()) == {1}, starts
        # no item was sent again: the items' own fields are "slow_item#<i>"
        assert _unit_counts(w, run.id, "slow_item", 10, "redelivered") == [0] * 10
    finally:
        w.stop()


def _unit_counts(w: Workers, run_id: str, node: str, n: int, what: str) -> list[int]:
    from celery_graph.state import state_for

    fields = state_for(w.app).runs.node_fields(run_id)
    return [int(fields.get(f"{node}#{i}:{what}", 0)) for i in range(n)]


def test_a_release_lost_with_the_graph_redis_waits_for_the_state_instead_of_failing(
    private_redis, redis_url, rclient, tag
):
    """The graph Redis loses its last writes (a crash under appendfsync everysec, a
    failover to a replica that lagged): the write that finished ``start`` and released
    ``next`` is gone, but ``next``'s message was sent. Restored, the state says ``start``
    is running under a lease and ``next`` was never released: ``next``'s message is
    acknowledged without running, the lease runs out, the reconciler sends ``start``
    again (its completion was lost, so its function runs again), and its completion
    releases ``next``, which runs once. The run succeeds."""
    graph = private_redis
    w = _workers(redis_url, graph_url=graph.url)
    w.extra_env["CGTEST_TRACE_REDIS_URL"] = redis_url
    try:
        w.start("lost-write")
        # next's message comes 2 s after start ends, while start (6 s) runs again
        flow = step.bind(id="start", name="start", tag=tag, delay=6) >> step.bind(
            id="next", name="next", tag=tag
        ).delay_by(2)
        run = flow.submit(app=w.app)
        wait_for(lambda: "start:start" in trace_of(rclient, tag), timeout=30, what="start to begin")
        redis.Redis.from_url(graph.url).save()  # the last write that reaches the disk
        wait_for(
            lambda: run.status().nodes["next"].state == "queued",
            timeout=30,
            what="start to finish and release next",
        )
        graph.stop(kill=True)
        graph.start()  # from the snapshot: start running, next not released
        assert run.status().nodes["next"].state == "pending"
        assert GraphRun(run.id, app=w.app).get(timeout=90) == "next"
        trace = trace_of(rclient, tag)
        assert trace.count("start:start") == 2, trace  # its completion was lost
        assert trace.count("start:next") == 1, trace
        assert deliveries(trace, run.id, "next") == 2, trace  # the early one, then the real
    finally:
        w.stop()


def test_get_says_the_state_was_lost_not_that_the_run_expired(private_redis, redis_url):
    """The graph Redis restarts without persistence under a run that cannot have expired:
    ``get()`` says its state was lost (RunStateLost, a RunNotFound), not that finished
    runs expire after graph_result_ttl."""
    w = _workers(redis_url, graph_url=private_redis.url)  # no worker: the run waits
    try:
        run = step.bind(name="waiting").submit(app=w.app)
        reopened = GraphRun(run.id, app=w.app)
        assert reopened.status().state == "running"
        never_read = GraphRun(run.id, app=w.app)
        private_redis.stop()
        private_redis.start()  # nothing persisted
        for handle in (run, reopened):
            with pytest.raises(RunStateLost, match="lost") as info:
                handle.get(timeout=5)
            assert "graph_result_ttl" not in str(info.value)
        with pytest.raises(RunNotFound, match=r"expired .* or was lost"):
            never_read.get(timeout=5)  # no way to tell: it says both
    finally:
        w.stop()
        w.app.connection_for_write().default_channel.queue_purge(w.queue)
