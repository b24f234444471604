"""Run control: broker failures, idempotent submission, deadlines, resume, backpressure."""

from __future__ import annotations

import json
import uuid

import pytest

from celery_graph import (
    Backpressure,
    BrokerUnavailable,
    GraphRun,
    PublishError,
    RunFailed,
    RunNotResumable,
)
from celery_graph.keys import Keys
from celery_graph.state import state_for
from celery_graph.testing import free_port
from tests.support.apps import make_app
from tests.support.fixtures import SESSION
from tests.support.helpers import postruns, purge_queue, wait_for
from tests.tasks import UNCONSUMED_QUEUE, extract, flaky, read_trace, step, unconsumed


def test_unreachable_broker_is_a_clear_error_and_the_run_is_marked_failed(app, redis_url, rclient):
    dead = make_app(redis_url, f"redis://127.0.0.1:{free_port()}/0", "cgtest_dead", SESSION)
    dead.conf.broker_connection_timeout = 1
    dead.conf.task_publish_retry_policy = {
        "max_retries": 1,
        "interval_start": 0,
        "interval_step": 0.1,
        "interval_max": 0.2,
    }
    keys = Keys(app.conf.graph_key_prefix)
    before = set(rclient.zrange(keys.runs_index(), 0, -1))
    try:
        with pytest.raises(PublishError, match="marked failed"):
            (extract >> step).submit(app=dead)
    finally:
        app.set_current()
    new = set(rclient.zrange(keys.runs_index(), 0, -1)) - before
    assert len(new) == 1
    run = GraphRun(new.pop().decode(), app=app)
    status = run.status()
    assert status.state == "failed"
    assert "publishing the root nodes failed" in status.error["message"]
    with pytest.raises(RunFailed, match="publishing the root nodes failed"):
        run.get(timeout=5)


def test_a_submission_that_cannot_read_queue_depths_names_the_broker_and_sends_nothing(
    app, redis_url, rclient
):
    """With backpressure on, a submission reads its queues' depths first: an unreachable
    broker is BrokerUnavailable naming the queue (it was kombu's own error), and no run
    is created. The reconciler meets the same error while the broker is away, and logs it
    on one line per run instead of a traceback."""
    dead = make_app(redis_url, f"redis://127.0.0.1:{free_port()}/0", "cgtest_dead", SESSION)
    dead.conf.broker_connection_timeout = 1
    dead.conf.broker_connection_max_retries = 0
    dead.conf.graph_max_queue_depth = 10
    keys = Keys(app.conf.graph_key_prefix)
    before = rclient.zcard(keys.runs_index())
    try:
        with pytest.raises(BrokerUnavailable, match=r"depth of queue '[^']+'"):
            (extract >> step).submit(app=dead)
    finally:
        app.set_current()
    assert rclient.zcard(keys.runs_index()) == before


def test_idempotency_key_returns_the_run_already_started(app, published):
    flow = extract >> step
    first = flow.apply_async(idempotency_key=f"order-42-{SESSION}")
    second = flow.apply_async(idempotency_key=f"order-42-{SESSION}")
    assert first.id == second.id
    assert first.get(timeout=20) == "step"
    roots = [m for m in published if m["body"][1]["_graph"]["n"] == "extract"]
    assert len(roots) == 1
    other = flow.apply_async(idempotency_key=f"order-43-{SESSION}")
    assert other.id != first.id


def test_deadline_fails_the_run_before_the_next_node_starts(app, tag):
    """No one waits on the run: the reconciler (sweeping in the worker), or the worker when
    'late' begins, whichever comes first, fails the run at its deadline."""
    flow = step.bind(id="slow", name="slow", delay=1.0) >> step.bind(id="late", name="late")
    run = flow.apply_async(tag=tag, deadline=0.5)
    wait_for(lambda: run.status().state == "failed", timeout=15, what="the deadline to fail it")
    status = run.status()
    assert status.error["type"] == "DeadlineExceeded"
    assert status.error["node"] in ("late", "")  # the worker at 'late', or the reconciler
    assert "start:late" not in read_trace(tag)
    with pytest.raises(RunFailed, match="deadline"):
        run.get(timeout=5)


def test_a_node_that_begins_past_the_deadline_fails_the_run_naming_it(app, tag):
    """The worker-side check, on the Redis server's clock: the run is kept out of the
    reconciler's sight, so only the worker beginning 'late' can notice."""
    from celery_graph.protocol import task_id_for

    spec = step.bind(id="late", name="late").compile()
    state = state_for(app)
    run = GraphRun(uuid.uuid4().hex, app=app)
    state.runs.create(run.id, spec, json.dumps({"tag": tag}), deadline=0.2)
    # out of the reconciler's sight (runs.forget would list a running run again)
    index = state.keys.running_index()
    state.client.zrem(index, run.id)
    assert state.client.zscore(index, run.id) is None
    deadline = float(state.runs.record(run.id)["deadline"])
    wait_for(lambda: state.runs.time() > deadline, timeout=5, what="the server clock")
    with postruns() as done:
        app.send_task(
            spec.nodes["late"].task,
            kwargs={"name": "late", "_graph": {"g": spec.graph_id, "r": run.id, "n": "late"}},
            task_id=task_id_for(run.id, "late"),
        )
        assert done.wait(task_id_for(run.id, "late"))
    status = run.status()
    assert status.state == "failed"
    assert status.error["type"] == "DeadlineExceeded"
    assert status.error["node"] == "late"
    assert "start:late" not in read_trace(tag)


def test_deadline_fails_a_stuck_run_even_with_no_worker_to_notice(app, rclient):
    run = unconsumed.as_graph().apply_async(deadline=0.3)
    try:
        with pytest.raises(RunFailed) as info:
            run.get(timeout=10)
    finally:
        purge_queue(app, UNCONSUMED_QUEUE)
    assert info.value.exc_type == "DeadlineExceeded"
    assert run.status().state == "failed"


def test_resume_redispatches_only_unfinished_nodes(app, tag):
    flow = (
        step.bind(id="first", name="first")
        >> flaky.bind(fail_times=4)
        >> step.bind(id="last", name="last")
    )
    run = flow.apply_async(tag=tag)
    with pytest.raises(RunFailed):
        run.get(timeout=30)
    assert run.status().nodes["flaky"].attempts == 4
    with pytest.raises(RunNotResumable, match="run is running"):
        _resume_running(app)
    run.resume()
    assert run.get(timeout=30) == "last"
    trace = read_trace(tag)
    assert trace.count("start:first") == 1  # its stored result was kept
    assert trace.count("start:last") == 1
    assert run.results()["flaky"] == 5


def _resume_running(app):
    run = unconsumed.as_graph().apply_async()
    try:
        run.resume()
    finally:
        run.cancel()
        purge_queue(app, UNCONSUMED_QUEUE)


def test_backpressure_waits_then_refuses_without_creating_a_run(app, rclient):
    keys = Keys(app.conf.graph_key_prefix)
    purge_queue(app, UNCONSUMED_QUEUE)  # what an earlier test's run left there
    try:
        app.conf.graph_max_queue_depth = 1
        app.conf.graph_backpressure_timeout = 0.5
        first = unconsumed.as_graph().apply_async()  # the queue holds 1 message now
        before = rclient.zcard(keys.runs_index())
        with pytest.raises(Backpressure, match=rf"'{UNCONSUMED_QUEUE}' holds 1"):
            unconsumed.as_graph().apply_async()
        assert rclient.zcard(keys.runs_index()) == before
        first.cancel()
    finally:
        app.conf.graph_max_queue_depth = None
        app.conf.graph_backpressure_timeout = None
        purge_queue(app, UNCONSUMED_QUEUE)
