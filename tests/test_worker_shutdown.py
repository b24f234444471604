"""Graceful shutdown and redelivery with real `graph-worker` subprocesses.

Each test runs ops_first >> ops_long >> ops_last, stops or kills the worker while
ops_long runs, and checks that the run still completes, on the same or another worker,
with every node's result stored once.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter

import pytest
import redis

from celery_graph import GraphRun
from celery_graph.worker.heartbeat import live_workers
from tests.apps import ops_tasks as t
from tests.support.apps import build_app
from tests.support.helpers import starts_processes, wait_for
from tests.support.processes import start_worker

PREFIX = f"cgops:shutdown:{uuid.uuid4().hex[:6]}"


@pytest.fixture()
@starts_processes
def env(redis_url, tmp_path):
    queue = f"cgops-shutdown-{uuid.uuid4().hex[:8]}"  # one queue per test: no stray messages
    started = []

    def worker(name, *args, visibility=None):
        extra = {"CGOPS_VISIBILITY": visibility} if visibility else None
        w = start_worker(
            tmp_path,
            name,
            broker_url=redis_url,
            queue=queue,
            prefix=PREFIX,
            extra_args=list(args),
            env=extra,
        )
        started.append(w)
        return w

    app = build_app(redis_url, queue, key_prefix=PREFIX)
    yield app, worker, redis.Redis.from_url(redis_url)
    for w in started:
        w.stop()


def run_three(app, tag, delay):
    flow = (
        t.ops_first.bind(tag=tag)
        >> t.ops_long.bind(tag=tag, delay=delay)
        >> t.ops_last.bind(tag=tag)
    )
    return flow.submit(app=app)


def wait_registered(app, w, timeout=20.0):
    return wait_for(
        lambda: any(x.pid == w.pid for x in live_workers(app)),
        timeout,
        f"worker pid {w.pid} in the registry\n{w.log()}",
    )


def started_on(client, tag, node):
    return [e[2] for e in t.events(client, tag) if e[0] == "start" and e[1] == node]


def check_once(client, tag, run, app):
    """Each node finished (and stored its result) exactly once."""
    ends = Counter(e[1] for e in t.events(client, tag) if e[0] == "end")
    assert ends == {"ops_first": 1, "ops_long": 1, "ops_last": 1}
    assert GraphRun(run.id, app=app).results() == {
        "ops_first": "ops_first",
        "ops_long": "ops_long",
        "ops_last": "ops_last<-ops_long",
    }


def test_sigterm_lets_the_running_node_finish_and_the_run_completes_elsewhere(env):
    app, worker, client = env
    w1 = worker("term1", "--graceful-timeout", "30")
    wait_registered(app, w1)
    tag = uuid.uuid4().hex[:8]
    run = run_three(app, tag, delay=3)
    wait_for(lambda: started_on(client, tag, "ops_long"), 20, "ops_long to start")
    w1.signal(signal.SIGTERM)
    w2 = worker("term2")
    assert w1.wait(25) == 0, w1.log()
    assert run.get(timeout=30) == "ops_last<-ops_long"
    status = GraphRun(run.id, app=app).status()
    assert status.nodes["ops_long"].worker.startswith("term1@")  # finished where it ran
    assert status.nodes["ops_long"].attempts == 1
    assert status.nodes["ops_last"].worker.startswith("term2@")  # term1 took no new work
    check_once(client, tag, run, app)
    assert "Warm shutdown" in w1.log()
    wait_registered(app, w2)
    assert all(x.pid != w1.pid for x in live_workers(app))  # deregistered on exit


def test_sigint_after_the_graceful_timeout_hands_the_node_back(env):
    app, worker, client = env
    w1 = worker("int1", "--graceful-timeout", "1")
    wait_registered(app, w1)
    tag = uuid.uuid4().hex[:8]
    run = run_three(app, tag, delay=3)
    wait_for(lambda: started_on(client, tag, "ops_long"), 20, "ops_long to start")
    signalled = time.monotonic()
    w1.signal(signal.SIGINT)
    w2 = worker("int2")
    w1.wait(20)
    stopped_after = time.monotonic() - signalled
    assert stopped_after < 10, f"took {stopped_after:.1f} s\n{w1.log()}"
    assert "Restoring 1 unacknowledged message" in w1.log()
    assert run.get(timeout=30) == "ops_last<-ops_long"
    hosts = started_on(client, tag, "ops_long")
    assert hosts[0].startswith("int1@") and hosts[-1].startswith("int2@"), hosts
    status = GraphRun(run.id, app=app).status()
    assert status.nodes["ops_long"].worker.startswith("int2@")
    assert status.nodes["ops_long"].attempts == 2
    # handed back with its lease released: run at once where it landed, nothing lost
    assert (status.nodes["ops_long"].lost, status.nodes["ops_long"].redelivered) == (0, 0)
    check_once(client, tag, run, app)
    wait_registered(app, w2)


def test_a_second_sigterm_hands_back_at_once(env):
    app, worker, client = env
    w1 = worker("twice1", "--graceful-timeout", "60")
    wait_registered(app, w1)
    tag = uuid.uuid4().hex[:8]
    run = run_three(app, tag, delay=3)
    wait_for(lambda: started_on(client, tag, "ops_long"), 20, "ops_long to start")
    w1.signal(signal.SIGTERM)
    wait_for(lambda: "Warm shutdown" in w1.log(), 5, "the warm shutdown to begin")
    w1.signal(signal.SIGTERM)
    signalled = time.monotonic()
    w2 = worker("twice2")
    w1.wait(20)
    assert time.monotonic() - signalled < 10, w1.log()  # not the 60 s graceful timeout
    assert run.get(timeout=30) == "ops_last<-ops_long"
    long = GraphRun(run.id, app=app).status().nodes["ops_long"]
    assert long.worker.startswith("twice2@")
    assert (long.lost, long.redelivered) == (0, 0)  # its lease was released with it
    check_once(client, tag, run, app)
    wait_registered(app, w2)


def test_sigkill_redelivers_after_the_visibility_timeout(env):
    app, worker, client = env
    visibility = 4
    app.conf.broker_transport_options = {"visibility_timeout": visibility}
    w1 = worker("kill1", visibility=visibility)
    wait_registered(app, w1)
    tag = uuid.uuid4().hex[:8]
    run = run_three(app, tag, delay=1.5)
    wait_for(lambda: started_on(client, tag, "ops_long"), 20, "ops_long to start")
    w1.stop()  # SIGKILL to the worker and its pool: no chance to hand anything back
    killed = time.monotonic()
    w2 = worker("kill2", visibility=visibility)
    assert run.get(timeout=visibility + 25) == "ops_last<-ops_long"
    redelivered_after = time.monotonic() - killed
    hosts = started_on(client, tag, "ops_long")
    assert hosts[0].startswith("kill1@") and hosts[-1].startswith("kill2@"), hosts
    check_once(client, tag, run, app)
    print(
        f"redelivered and finished {redelivered_after:.1f} s after SIGKILL "
        f"(visibility {visibility} s)"
    )
    # the killed worker drops out of the registry when its heartbeat TTL (3 s) runs out
    wait_for(
        lambda: all(x.pid != w1.pid for x in live_workers(app)),
        10,
        "the killed worker to expire from the registry",
    )
    wait_registered(app, w2)
