"""Faults against real processes: a worker SIGKILLed mid-node, a Redis restart mid-run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from celery_graph import GraphRun, RunFailed, StoreUnavailable
from celery_graph.state import state_for
from celery_graph.testing import PrivateRedis
from tests.support.helpers import starts_processes, trace_of, wait_for
from tests.support.processes import Workers
from tests.tasks import join_count, step


@pytest.fixture()
@starts_processes
def workers(redis_url: str) -> Iterator[Workers]:
    with Workers(redis_url) as w:
        yield w


def _body_started(run: GraphRun, rclient: redis.Redis, tag: str, node_id: str, timeout: float):
    """The run's status once ``node_id``'s function has started (its trace's start line),
    the node running. Its state says running from just before the function: a kill in
    between, on a loaded machine, runs the function once in all."""
    wait_for(
        lambda: f"start:{node_id}" in trace_of(rclient, tag),
        timeout=timeout,
        what=f"{node_id}'s function to start",
    )
    status = run.status()
    assert status.nodes[node_id].state == "running", status.nodes[node_id]
    return status


def test_worker_killed_mid_node_run_completes_with_everything_once(workers, rclient, tag):
    workers.start("a")
    workers.start("b")
    slow = step.bind(id="slow", name="slow", delay=2.0)
    flow = step.bind(id="first", name="first") >> (slow | step.bind(id="fast", name="fast"))
    flow = flow >> join_count
    run = flow.submit({"tag": tag}, app=workers.app)
    victim = _body_started(run, rclient, tag, "slow", timeout=20).nodes["slow"].worker
    workers.kill(victim)
    assert run.get(timeout=60) == "join_count"
    trace = trace_of(rclient, tag)
    assert trace.count("start:slow") == 2, trace  # at-least-once execution...
    assert trace.count("end:slow") == 1, trace
    assert trace.count("start:join_count") == 1, trace  # ...but the join ran once
    assert int(rclient.get(f"cgtest-count:{tag}:join_count")) == 1
    final = run.status()
    assert final.nodes["slow"].attempts == 2
    assert final.nodes["slow"].worker != victim
    assert set(run.results()) == {"first", "slow", "fast", "join_count"}


@pytest.mark.slow
def test_worker_killed_after_an_eager_successor_was_begun_before_its_function(
    redis_url, rclient, tag
):
    """The call that completed first leased slow as running for its worker
    (complete_begin.lua); the worker is SIGKILLed before slow's function starts (held in
    Celery's task_prerun): the lease runs out, the reconciler counts one lost worker and
    sends slow again, and it runs once, elsewhere (DESIGN.md, invariants 9 and 11)."""
    workers = Workers(redis_url, pool="threads", isolate=True)
    workers.extra_env["CGTEST_HOLD_PRERUN"] = "slow:60"
    try:
        workers.start("a")
        workers.start("b")
        flow = (
            step.bind(id="first", name="first")
            >> step.bind(id="slow", name="slow", tag=tag)  # in its message, for the hold
            >> step.bind(id="last", name="last")
        )
        run = flow.submit({"tag": tag}, app=workers.app)
        status = wait_for(
            lambda: (
                "prerun:slow" in trace_of(rclient, tag)
                and (s := run.status()).nodes["slow"].state == "running"
                and s
            ),
            timeout=30,
            what="slow to be begun and held before its function",
        )
        victim = status.nodes["slow"].worker
        assert victim == status.nodes["first"].worker  # begun where first ran
        assert status.nodes["slow"].attempts == 1
        workers.kill(victim)
        assert "start:slow" not in trace_of(rclient, tag)
        assert run.get(timeout=90) == "last"
        trace = trace_of(rclient, tag)
        assert trace.count("start:first") == 1, trace
        assert trace.count("start:slow") == trace.count("end:slow") == 1, trace
        assert trace.count("start:last") == 1, trace
        final = run.status()
        assert final.nodes["slow"].attempts == 2
        assert final.nodes["slow"].worker != victim
        assert state_for(workers.app).runs.node_fields(run.id).get("slow:lost") == "1"
    finally:
        workers.stop()
        workers.app.connection_for_write().default_channel.queue_purge(workers.queue)


@pytest.mark.slow
def test_redis_restart_mid_run_completes_or_fails_clearly(tmp_path, tag):
    server = PrivateRedis(appendonly=True).start()
    w = None
    try:
        w = Workers(server.url)
        w.start("r")
        flow = (
            step.bind(id="before", name="before")
            >> step.bind(id="during", name="during", delay=2.0)
            >> step.bind(id="after", name="after")
        )
        run = flow.submit({"tag": tag}, app=w.app)
        wait_for(
            lambda: run.status().nodes["during"].state == "running",
            timeout=20,
            what="the node to start",
        )
        server.stop()  # SIGTERM: the AOF is fsynced on every write
        server.start()
        # Celery's worker may exit on a broker reconnect (a known Celery/kombu bug family,
        # e.g. celery#9250); like systemd's Restart=always or Kubernetes, restart it.
        w.supervise()
        try:
            result = GraphRun(run.id, app=w.app).get(timeout=60)
        except (RunFailed, StoreUnavailable) as exc:  # allowed: a clear error, no hang
            pytest.fail(f"run did not survive the restart: {exc!r}")
        assert result == "after"
        client = redis.Redis.from_url(server.url)
        assert trace_of(client, tag).count("start:after") == 1
    finally:
        if w is not None:
            w.stop()
        server.cleanup()


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_worker_killed_mid_eager_successor_completes_with_everything_once(
    redis_url, rclient, tag, pool
):
    """The successor runs in the worker that ran its upstream node, without a message
    (executor/eager.py); SIGKILLed there, its lease runs out and the reconciler sends it:
    it runs once more, and nothing else runs twice."""
    workers = Workers(redis_url, pool=pool, isolate=True)
    try:
        workers.start("a")
        workers.start("b")
        flow = (
            step.bind(id="first", name="first")
            >> step.bind(id="slow", name="slow", delay=10.0)
            >> step.bind(id="last", name="last")
        )
        run = flow.submit({"tag": tag}, app=workers.app)
        # (running is recorded by the call that completed first, complete_begin.lua)
        status = _body_started(run, rclient, tag, "slow", timeout=30)
        victim = status.nodes["slow"].worker
        assert victim == status.nodes["first"].worker  # run eagerly, where first ran
        workers.kill(victim)
        assert "end:slow" not in trace_of(rclient, tag)  # killed in the middle of it
        assert run.get(timeout=90) == "last"
        trace = trace_of(rclient, tag)
        assert trace.count("start:first") == 1, trace
        assert trace.count("start:slow") == 2, trace  # once more, after the kill
        assert trace.count("end:slow") == 1, trace
        assert trace.count("start:last") == 1, trace
        final = run.status()
        assert final.nodes["slow"].attempts == 2
        assert final.nodes["slow"].worker != victim
        assert set(run.results()) == {"first", "slow", "last"}
    finally:
        workers.stop()
        workers.app.connection_for_write().default_channel.queue_purge(workers.queue)
