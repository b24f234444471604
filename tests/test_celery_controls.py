"""Celery's own controls on graph nodes, against real `celery worker` subprocesses
(prefork, so terminate can kill a pool process): revoke and terminate through
``app.control``, ``AsyncResult.revoke``, the real ``celery control`` command and
``celery workflow cancel --terminate``; Celery's task signals for nodes; node results in
the app's result backend (Redis, and SQLAlchemy's ``db+sqlite``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from celery_graph import RunCancelled, RunFailed
from celery_graph.state import Revoked, state_for
from celery_graph.worker.revokes import RevokeWatch
from tests.support.helpers import starts_processes, trace_of, wait_for
from tests.support.processes import ROOT, Workers
from tests.tasks import boom, extract, flaky, slow, step, transform, unconsumed

pytestmark = pytest.mark.timeout(240)


class ControlWorkers(Workers):
    """Workers of tests/controls_app.py, which records Celery's task signals."""

    def __init__(self, redis_url: str, **kwargs: object) -> None:
        super().__init__(redis_url, **kwargs)  # type: ignore[arg-type]
        self.signals_key = f"cgtest-signals:{self.queue}"
        self.extra_env["CGTEST_SIGNALS"] = self.signals_key

    def app_ref(self) -> str:
        return "tests.controls_app:app"

    def celery(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The real `celery -A <the workers' app> ARGS` command."""
        return subprocess.run(
            [sys.executable, "-m", "celery", "-A", self.app_ref(), *args],
            env=self.env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def signals(self, client: redis.Redis) -> list[str]:
        return [e.decode() for e in client.lrange(self.signals_key, 0, -1)]


@pytest.fixture(scope="module")
@starts_processes
def workers(redis_url: str) -> Iterator[ControlWorkers]:
    w = ControlWorkers(redis_url, concurrency=2, pool="prefork", isolate=True)
    try:
        w.start("controls")
        yield w
    finally:
        w.stop()
        w.app.connection_for_write().default_channel.queue_purge(w.queue)


def running(run, node_id: str) -> None:
    wait_for(
        lambda: run.status().nodes[node_id].state == "running",
        timeout=60,
        what=f"node {node_id} to run",
    )


def cancelled_by(run, node_id: str, within: float = 20.0):
    """Wait for the run to end as cancelled; its status, whose error names the node."""
    status = wait_for(
        lambda: (s := run.status()).state != "running" and s,
        timeout=within,
        what="the revoke to end the run",
    )
    assert status.state == "cancelled", status
    assert status.error["node"] == node_id, status.error
    assert status.error["type"] == "TaskRevokedError"
    assert f"node {node_id!r} revoked" in status.error["message"]
    return status


def not_active(workers: ControlWorkers, task_id: str) -> bool:
    active = workers.app.control.inspect(timeout=2).active() or {}
    return all(t["id"] != task_id for tasks in active.values() for t in tasks)


def test_revoking_a_running_node_through_app_control_cancels_its_run(workers, rclient, tag):
    flow = (
        step.bind(id="first", name="first")
        >> slow.bind(id="clean", name="clean", delay=6.0)
        >> step.bind(id="after", name="after")
    )
    run = flow.submit({"tag": tag}, app=workers.app)
    running(run, "clean")
    began = time.monotonic()
    workers.app.control.revoke(f"{run.id}:clean")  # no terminate: the node goes on
    cancelled_by(run, "clean")
    assert time.monotonic() - began < 10  # within seconds, not a reconciler's lease
    with pytest.raises(RunCancelled, match="node 'clean' revoked"):
        run.get(timeout=5)
    wait_for(lambda: "end:clean" in trace_of(rclient, tag), timeout=30, what="clean to end")
    # nothing after it ran, and it was never sent again
    time.sleep(1)
    status = run.status()
    assert status.state == "cancelled"
    assert status.nodes["clean"].attempts == 1
    assert "start:after" not in trace_of(rclient, tag)
    assert trace_of(rclient, tag).count("start:clean") == 1


def test_terminate_through_the_celery_command_kills_the_node_and_cancels_the_run(
    workers, rclient, tag
):
    flow = step.bind(id="first", name="first") >> slow.bind(id="clean", name="clean", delay=60)
    run = flow.submit({"tag": tag}, app=workers.app)
    running(run, "clean")
    task_id = f"{run.id}:clean"
    done = workers.celery("control", "terminate", "SIGTERM", task_id)
    assert done.returncode == 0, done.stderr
    status = cancelled_by(run, "clean")
    # which reports it first words the run's error: the task_revoked receiver ("terminated
    # with signal 15") or the worker's once-a-second look at its revoked ids (without); that
    # it was a terminate is Celery's task_revoked signal below
    pattern = rf"node 'clean' revoked \(task {re.escape(task_id)}(, terminated with [^)]+)?\)"
    assert re.match(pattern, status.error["message"]), status.error["message"]
    wait_for(lambda: not_active(workers, task_id), timeout=60, what="the node to be killed")
    assert "end:clean" not in trace_of(rclient, tag)
    wait_for(
        lambda: f"task_revoked {task_id} terminated" in workers.signals(rclient),
        timeout=20,
        what="Celery's task_revoked signal for the terminate",
    )
    assert workers.app.AsyncResult(task_id).state == "REVOKED"


def test_asyncresult_revoke_with_terminate_kills_the_node(workers, rclient, tag):
    flow = slow.bind(id="clean", name="clean", delay=60).as_graph()
    run = flow.submit({"tag": tag}, app=workers.app)
    running(run, "clean")
    task_id = f"{run.id}:clean"
    workers.app.AsyncResult(task_id).revoke(terminate=True, signal="SIGKILL")
    cancelled_by(run, "clean")
    wait_for(lambda: not_active(workers, task_id), timeout=60, what="the node to be killed")
    assert "end:clean" not in trace_of(rclient, tag)


def test_revoking_a_node_not_sent_yet_through_the_celery_command_then_resuming(
    workers, rclient, tag
):
    """The revoke ends the run while the node's predecessor runs; a resume runs it under a
    task id of the next epoch, which the revoke, still in every worker's revoked set,
    does not discard."""
    # long enough for the `celery` command to start and reach the workers, under load
    flow = slow.bind(id="first", name="first", delay=15.0) >> step.bind(id="after", name="after")
    run = flow.submit({"tag": tag}, app=workers.app)
    done = workers.celery("control", "revoke", f"{run.id}:after")
    assert done.returncode == 0, done.stderr
    cancelled_by(run, "after", within=30)
    assert "end:first" not in trace_of(rclient, tag)  # cancelled while first still ran
    wait_for(lambda: "end:first" in trace_of(rclient, tag), timeout=60, what="first to end")
    # a stale revoke (synced to a new worker, kept in a statedb) changes nothing now
    state = state_for(workers.app)
    watch = RevokeWatch(workers.app, revoked_ids=lambda: [f"{run.id}:after"])
    run.resume()
    assert watch.scan() == []
    assert run.get(timeout=60) == "after"
    assert trace_of(rclient, tag).count("start:first") == 1  # its result was kept
    signals = workers.signals(rclient)
    assert f"task_prerun {run.id}:after~1" in signals
    assert f"task_prerun {run.id}:after" not in signals
    from celery_graph.engine.lifecycle import revoked

    assert revoked(workers.app, state, f"{run.id}:after") == Revoked.NOT_RUNNING


def test_cancel_terminate_from_python_and_from_the_workflow_command(workers, rclient, tag):
    one = (
        slow.bind(id="clean", name="clean", delay=60)
        .as_graph()
        .submit({"tag": tag}, app=workers.app)
    )
    running(one, "clean")
    assert one.running_task_ids() == [f"{one.id}:clean"]
    assert one.cancel(terminate=True)
    wait_for(lambda: not_active(workers, f"{one.id}:clean"), timeout=60, what="a kill")
    assert one.status().state == "cancelled"

    other = f"{tag}-cli"
    two = (
        slow.bind(id="clean", name="clean", delay=60)
        .as_graph()
        .submit({"tag": other}, app=workers.app)
    )
    running(two, "clean")
    done = workers.celery("workflow", "cancel", "--terminate", "--json", two.id)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["cancelled"] is True and answer["terminated"] == [f"{two.id}:clean"]
    wait_for(lambda: not_active(workers, f"{two.id}:clean"), timeout=60, what="a kill")
    assert f"task_revoked {two.id}:clean terminated" in workers.signals(rclient)
    assert "end:clean" not in trace_of(rclient, tag) + trace_of(rclient, other)


def test_celery_task_signals_fire_for_nodes(workers, rclient, tag):
    run = (extract >> flaky.bind(tag=tag, fail_times=1)).submit(app=workers.app)
    assert run.get(timeout=60) == 2
    failing = boom.bind(tag=tag).as_graph().submit(app=workers.app)
    with pytest.raises(RunFailed):
        failing.get(timeout=60)
    wait_for(
        lambda: f"task_postrun {failing.id}:boom FAILURE" in workers.signals(rclient),
        timeout=20,
        what="the failing node's postrun",
    )
    ex, fl = f"{run.id}:extract", f"{run.id}:flaky"
    for expected in (
        f"task_prerun {ex}",
        f"task_postrun {ex} SUCCESS",
        f"task_success {ex} [1, 2, 3]",
        f"task_retry {fl}",
        f"task_success {fl} 2",
        f"task_prerun {failing.id}:boom",
        f"task_failure {failing.id}:boom ValueError",
    ):
        # a node's task_success fires after its result ended the run: wait for it
        wait_for(lambda e=expected: e in workers.signals(rclient), 20, f"signal {expected!r}")
    # (task_revoked: the terminate tests above)


# -- results in the result backend ---------------------------------------------------


def test_node_results_and_failures_are_in_the_result_backend(app):
    run = (extract >> transform).apply_async()
    assert run.get(timeout=30) == [10, 20, 30]
    for node_id, value in (("extract", [1, 2, 3]), ("transform", [10, 20, 30])):
        result = app.AsyncResult(f"{run.id}:{node_id}")
        assert result.state == "SUCCESS"
        assert result.result == value
    failing = boom.bind(id="broken").as_graph().apply_async()
    with pytest.raises(RunFailed):
        failing.get(timeout=30)
    result = app.AsyncResult(f"{failing.id}:broken")
    wait_for(lambda: result.state == "FAILURE", timeout=10, what="the failure stored")
    assert isinstance(result.result, ValueError)
    assert "boom went the node" in str(result.result)


def test_the_setting_turns_node_results_in_the_backend_off(app):
    app.conf.graph_store_node_results = False
    try:
        run = extract.as_graph().apply_async()
        assert run.get(timeout=30) == [1, 2, 3]
        assert app.AsyncResult(f"{run.id}:extract").state == "PENDING"
    finally:
        app.conf.graph_store_node_results = True


@pytest.mark.slow
def test_node_results_in_a_database_result_backend(redis_url, tmp_path):
    pytest.importorskip("sqlalchemy")
    backend = f"db+sqlite:///{tmp_path / 'results.sqlite'}"
    w = ControlWorkers(redis_url, concurrency=2, pool="threads")
    w.extra_env["CGTEST_RESULT_BACKEND"] = backend
    w.app.conf.result_backend = backend
    try:
        w.start(f"db-{uuid.uuid4().hex[:6]}")
        run = (extract >> transform).submit(app=w.app)
        assert run.get(timeout=60) == [10, 20, 30]
        result = w.app.AsyncResult(f"{run.id}:transform")
        assert result.state == "SUCCESS" and result.result == [10, 20, 30]
    finally:
        w.stop()


def test_the_watch_on_revoked_ids_cancels_once_and_ignores_other_ids(app):
    """RevokeWatch alone (the workers' thread), over a given list of revoked ids: a node
    whose message waits in a queue nobody consumes."""
    run = unconsumed.as_graph().apply_async()
    ids = [str(uuid.uuid4()), f"{run.id}:unconsumed", f"{uuid.uuid4().hex}:gone"]
    watch = RevokeWatch(app, revoked_ids=lambda: ids, active_ids=lambda: ids[1:2])
    assert watch.scan() == []  # running here: a terminate would report itself first
    assert watch.scan() == [f"{run.id}:unconsumed"]
    assert watch.scan() == []  # each id is acted on once
    with pytest.raises(RunCancelled, match="node 'unconsumed' revoked"):
        run.get(timeout=10)
    assert app.AsyncResult(f"{run.id}:unconsumed").state == "REVOKED"
