"""Durable runs against real processes that die: the broker losing every queued message,
plain `celery worker`s with Celery's stock settings SIGKILLed, the graph Redis or the
broker away for longer than their clients retry, a submitter killed while it waits, a
worker whose clock is an hour off, a message that kills its worker every time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis

from celery_graph import GraphRun, RunFailed
from celery_graph.state import state_for
from celery_graph.testing import PrivateRedis
from tests.support.helpers import trace_of, wait_for
from tests.support.processes import ROOT, Workers
from tests.tasks import UNCONSUMED_QUEUE, kill_own_process, step, unconsumed

pytestmark = pytest.mark.slow  # worker subprocesses, brokers and Redis servers taken away

# Short leases and sweeps, so recovery is measured in seconds (defaults: 30 s and 15 s).
FAST = {
    "CELERY_GRAPH_QUEUED_LEASE": "2",
    "CELERY_GRAPH_RUNNING_LEASE": "2",
    "CELERY_GRAPH_RECONCILE_INTERVAL": "0.5",
}


def _workers(broker_url: str, **kwargs) -> Workers:
    w = Workers(broker_url, **kwargs)
    w.extra_env.update(FAST)
    w.app.conf.update(graph_queued_lease=2, graph_running_lease=2)
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


def _middle_started(rclient, tag: str) -> None:
    """Wait until chain3's middle node has begun its body."""
    wait_for(
        lambda: "start:middle" in trace_of(rclient, tag),
        timeout=30,
        what="the middle node to start",
    )


def chain3(tag: str, delay: float = 0.0):
    return (
        step.bind(id="first", name="first", tag=tag)
        >> step.bind(id="middle", name="middle", tag=tag, delay=delay)
        >> step.bind(id="last", name="last", tag=tag)
    )


def test_a_broker_that_loses_every_queued_message_delays_runs_but_loses_none(
    private_redis, redis_url, rclient, tag
):
    """The broker (a Redis without persistence) restarts with runs queued and no worker up:
    every message is gone. Graph state knows what was published; the reconciler sends it
    again once a worker runs."""
    broker = private_redis
    w = _workers(broker.url, graph_url=redis_url)
    try:
        runs = [chain3(f"{tag}{i}").submit(app=w.app) for i in range(5)]
        assert broker_depth(broker, w.queue) == 5
        broker.stop()
        broker.start()  # nothing persisted: the five root messages are lost
        assert broker_depth(broker, w.queue) == 0
        started = time.monotonic()
        w.start("after-loss")
        for run in runs:
            assert run.get(timeout=60) == "last"
        recovered = time.monotonic() - started
        for i in range(5):
            trace = trace_of(rclient, f"{tag}{i}")
            assert [trace.count(f"start:{n}") for n in ("first", "middle", "last")] == [1, 1, 1]
        assert all(r.status().nodes["first"].redelivered == 1 for r in runs)
        print(f"broker loss: recovered {len(runs)} runs in {recovered:.1f} s")
    finally:
        w.stop()


def broker_depth(broker: PrivateRedis, queue: str) -> int:
    return int(redis.Redis.from_url(broker.url).llen(queue))


def test_a_plain_celery_worker_with_stock_settings_killed_mid_node_loses_nothing(
    redis_url, rclient, tag
):
    """`celery worker` with Celery's stock settings (no acks_late in the app, the broker's
    one-hour visibility timeout, prefork, prefetch 4) SIGKILLed with its pool while a node
    runs: the node's lease runs out and the reconciler sends it again, in seconds."""
    w = _workers(redis_url, pool="prefork", stock=True, isolate=True)
    try:
        w.start("stock-a")
        w.start("stock-b")
        run = chain3(tag, delay=3.0).submit(app=w.app)
        wait_for(
            lambda: "start:middle" in trace_of(rclient, tag),
            timeout=30,
            what="the middle node's function to start",
        )
        victim = run.status().nodes["middle"].worker
        killed_at = time.monotonic()
        w.kill(victim)
        assert run.get(timeout=60) == "last"
        recovered = time.monotonic() - killed_at
        trace = trace_of(rclient, tag)
        # run again after the kill (at least once: under heavy load a slow lease renewal
        # may send it once more), its successor once
        assert trace.count("start:middle") >= 2, trace
        assert trace.count("start:last") == 1, trace
        final = run.status()
        assert final.nodes["middle"].worker != victim
        # the death was seen (the reconciler re-sent the node, or a copy arrived while the
        # dead attempt still held the node: counted as lost), and well before the stock
        # one-hour visibility timeout
        middle = final.nodes["middle"]
        assert middle.redelivered + middle.lost >= 1, middle
        assert recovered < 45
        print(f"stock worker killed: run finished {recovered:.1f} s after the kill")
    finally:
        w.stop()


def test_the_graph_redis_away_longer_than_its_retries_is_not_a_node_failure(
    persistent_redis, redis_url, rclient, tag
):
    """The graph Redis stops while a node runs and comes back 8 s later: the node's
    completion cannot be stored, its message is sent again with backoff, and the run
    finishes as if nothing happened."""
    graph = persistent_redis
    w = _workers(redis_url, graph_url=graph.url)
    w.extra_env["CGTEST_TRACE_REDIS_URL"] = redis_url
    try:
        w.start("graph-down")
        run = chain3(tag, delay=2.0).submit(app=w.app)
        _middle_started(rclient, tag)
        graph.stop()
        wait_for(
            lambda: "end:middle" in trace_of(rclient, tag),
            timeout=30,
            what="the middle node to return while Redis is away",
        )
        time.sleep(6)  # longer than redis-py's own retries: the outage under test
        graph.start()
        w.supervise()
        assert GraphRun(run.id, app=w.app).get(timeout=90) == "last"
        trace = trace_of(rclient, tag)
        assert trace.count("start:last") == 1
        assert run.status().state == "succeeded"
    finally:
        w.stop()


def test_the_broker_away_while_successors_are_published_is_not_a_failure(
    persistent_redis, redis_url, rclient, tag
):
    """The broker stops while a node runs: its successor cannot be published. The node
    succeeded, so the run does not fail; once the broker is back the successor runs.
    (Eager successors off: with them on, the successor needs no broker, see below.)"""
    broker = persistent_redis
    w = _workers(broker.url, graph_url=redis_url)
    w.extra_env["CELERY_GRAPH_EAGER_SUCCESSORS"] = "0"
    try:
        w.start("broker-down")
        w.supervise()  # Celery's worker may exit on a broker reconnect (celery#9250)
        run = chain3(tag, delay=2.0).submit(app=w.app)
        _middle_started(rclient, tag)
        broker.stop()
        wait_for(
            lambda: "end:middle" in trace_of(rclient, tag),
            timeout=30,
            what="the middle node to return while the broker is away",
        )
        time.sleep(3)  # the outage under test
        assert run.status().state == "running"
        broker.start()
        assert run.get(timeout=90) == "last"
        assert trace_of(rclient, tag).count("start:last") == 1
    finally:
        w.stop()


def test_eager_successors_finish_a_chain_while_the_broker_is_away(
    persistent_redis, redis_url, rclient, tag
):
    """With eager successors (the default) the rest of a sequential run needs no broker:
    it finishes during the outage; the message that started the chain, unacknowledged,
    comes back once the broker does and changes nothing."""
    broker = persistent_redis
    w = _workers(broker.url, graph_url=redis_url)
    try:
        w.start("broker-down-eager")
        w.supervise()
        run = chain3(tag, delay=2.0).submit(app=w.app)
        _middle_started(rclient, tag)
        broker.stop()
        assert run.get(timeout=60) == "last"
        broker.start()
        time.sleep(3)  # the first message may come back: it runs nothing again
        trace = trace_of(rclient, tag)
        assert [trace.count(f"start:{n}") for n in ("first", "middle", "last")] == [1, 1, 1]
    finally:
        w.stop()


SUBMITTER = """
import sys
from celery_graph.client import submit as submit_module
from tests.support.apps import make_app
from tests.tasks import unconsumed

app = make_app(sys.argv[1], None, "cgtest_submitter", sys.argv[2])
app.conf.graph_max_queue_depth = 1
app.conf.graph_backpressure_timeout = 120
real = submit_module.wait_for_room

def observed(*args, **kwargs):
    print("waiting", flush=True)
    return real(*args, **kwargs)

submit_module.wait_for_room = observed
unconsumed.bind(id="keyed").as_graph().apply_async(idempotency_key=sys.argv[3])
print("submitted", flush=True)
"""


def test_a_submitter_killed_while_it_waits_lets_a_retry_start_the_run(app, redis_url, tag):
    """A submitter waits for queue room and is killed: nothing was written, so a retry
    with the same idempotency key starts the run (it used to find a key pointing nowhere)."""
    from tests.support.fixtures import SESSION

    key = f"killed-submitter-{tag}"
    with app.connection_for_write() as conn:  # what an earlier test's run left there
        conn.default_channel.queue_purge(UNCONSUMED_QUEUE)
    blocker = unconsumed.as_graph().apply_async()  # the queue holds one message: no room
    proc = subprocess.Popen(
        [sys.executable, "-c", SUBMITTER, redis_url, SESSION, key],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "waiting"
        proc.kill()
        proc.wait(10)
        blocker.cancel()
        run = unconsumed.bind(id="keyed").as_graph().apply_async(idempotency_key=key)
        assert run.status().state == "running"  # it exists
        assert run.cancel()
    finally:
        proc.kill()
        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge(UNCONSUMED_QUEUE)


def test_a_worker_an_hour_fast_keeps_deadlines_on_the_server_clock(redis_url, rclient, tag):
    """Deadlines, leases and start times are compared on the Redis server's clock: a
    worker whose clock is an hour ahead neither fails a run's deadline at once nor
    records its start times in the future."""
    w = _workers(redis_url)
    w.extra_env["CGTEST_CLOCK_SKEW"] = "3600"
    try:
        w.start("fast-clock")
        run = chain3(tag).submit(app=w.app, deadline=60)
        assert run.get(timeout=30) == "last"
        status = run.status()
        server_now = state_for(w.app).runs.time()
        assert all(n.started is not None and n.started <= server_now for n in status.nodes.values())
    finally:
        w.stop()


def test_a_message_that_kills_its_worker_every_time_fails_the_run_clearly(redis_url, tag):
    w = _workers(redis_url, pool="prefork", concurrency=1)
    w.extra_env["CELERY_GRAPH_MAX_LOST"] = "2"
    try:
        w.start("poisoned")
        w.supervise()
        run = kill_own_process.bind(tag=tag).submit(app=w.app)
        with pytest.raises(RunFailed) as info:
            run.get(timeout=90)
        assert info.value.exc_type == "NodeLost"
        assert info.value.node_id == "kill_own_process"
        assert "lost its worker 3 times" in info.value.exc_message
        result = w.app.AsyncResult(f"{run.id}:kill_own_process")  # in the result backend too
        assert result.state == "FAILURE"
        assert type(result.result).__name__ == "NodeLost"
        assert "lost its worker 3 times" in str(result.result)
    finally:
        w.stop()


def test_the_reconcile_command_sends_again_what_no_worker_will(redis_url, tag):
    """`celery-graph reconcile --once` with no worker running: a run whose root message
    was lost gets it back in its queue."""
    w = _workers(redis_url)
    try:
        run = step.bind(name="lonely", tag=tag).submit(app=w.app)
        w.app.connection_for_write().default_channel.queue_purge(w.queue)  # the loss
        state = state_for(w.app)
        lease = state.runs.leases(run.id)["step"]
        wait_for(lambda: state.runs.time() > lease, timeout=10, what="the lease to run out")
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            CGTEST_REDIS_URL=redis_url,
            CGTEST_QUEUE=w.queue,
            CGTEST_PREFIX=w.prefix,
            **FAST,
        )
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "celery_graph.cli",
                "-A",
                "tests.brokerapp:env_app",
                "reconcile",
                "--once",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert f"sent again {run.id}:step" in out.stdout
        assert redis.Redis.from_url(redis_url).llen(w.queue) == 1
    finally:
        w.stop()
        w.app.connection_for_write().default_channel.queue_purge(w.queue)
