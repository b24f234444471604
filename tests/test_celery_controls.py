"""Celery's own controls on graph nodes, against real `celery worker` subprocesses
(prefork, so terminate can kill a pool process): revoke and terminate through
``app.control``, ``AsyncResult.revoke``, the real ``celery control`` command and
``celery workflow cancel --terminate``; Celery's task signals for nodes; node results in
the app's result backend (Redis, and SQLAlchemy's ``db+sqlite``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from celery_graph import RunCancelled, RunFailed
from celery_graph.dispatch import publish_nodes
from celery_graph.engine.results import store_success, success_writes
from celery_graph.protocol import NodeMessage
from celery_graph.state import Revoked, state_for
from celery_graph.worker.revokes import HOLD_LOOKS, RevokeWatch, _terminated_ids, _terminating
from tests.support.apps import new_app
from tests.support.helpers import starts_processes, trace_of, wait_for
from tests.support.processes import ROOT, Workers
from tests.tasks import (
    always_published,
    boom,
    extract,
    flaky,
    pid_step,
    slow,
    step,
    transform,
    unconsumed,
)

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
    """The workers answered, and none runs ``task_id`` (no answer in time is not a yes)."""
    active = workers.app.control.inspect(timeout=2).active()
    if not active:
        return False
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


def published_clean(workers: ControlWorkers, tag: str) -> tuple[object, str]:
    """A run whose node "clean" runs for a minute as a published message (a request the
    worker received: Celery's terminate kills those only, an eager successor is not one),
    once it runs; the run and the node's task id."""
    flow = step.bind(id="first", name="first") >> always_published.bind(
        id="clean", name="clean", delay=60
    )
    run = flow.submit({"tag": tag}, app=workers.app)
    running(run, "clean")
    return run, f"{run.id}:clean"


def terminate_with_the_command(workers: ControlWorkers, rclient, tag: str, run, task_id: str):
    """`celery control terminate SIGTERM` the node: the run is cancelled, the node's pool
    process killed before the function ends, and Celery reports it; the run's status."""
    done = workers.celery("control", "terminate", "SIGTERM", task_id)
    assert done.returncode == 0, done.stderr
    status = cancelled_by(run, "clean")
    wait_for(lambda: not_active(workers, task_id), timeout=60, what="the node to be killed")
    assert "end:clean" not in trace_of(rclient, tag)
    wait_for(
        lambda: f"task_revoked {task_id} terminated" in workers.signals(rclient),
        timeout=20,
        what="Celery's task_revoked signal for the terminate",
    )
    return status


def test_terminate_through_the_celery_command_kills_the_node_and_cancels_the_run(
    workers, rclient, tag
):
    run, task_id = published_clean(workers, tag)
    status = terminate_with_the_command(workers, rclient, tag, run, task_id)
    # the task_revoked receiver words it: the worker's look at its revoked ids waits while
    # the worker holds the message (received, or running), so a terminate reports first
    pattern = rf"node 'clean' revoked \(task {re.escape(task_id)}, terminated with [^)]+\)"
    assert re.match(pattern, status.error["message"]), status.error["message"]
    assert workers.app.AsyncResult(task_id).state == "REVOKED"


def test_terminate_kills_a_node_after_a_copy_of_its_message_was_acknowledged(workers, rclient, tag):
    """A copy of a running node's message (the reconciler's when the node seemed lost,
    the broker's after its visibility timeout) reaching the worker that runs the node is
    acknowledged without running. Celery keeps one request per task id and forgot the id
    when the copy ended: its terminate answered "tasks unknown" and the node ran on."""
    run, task_id = published_clean(workers, tag)
    publish_nodes(workers.app, run.spec(), run.id, ["clean"], delays=False)
    wait_for(
        lambda: f"task_postrun {task_id} SUCCESS" in workers.signals(rclient),
        timeout=30,
        what="the copy to be acknowledged",
    )
    # Celery's main process has read the copy's end: its own lookup has lost the id
    wait_for(
        lambda: (
            (answer := workers.app.control.inspect(timeout=2).query_task(task_id))
            and not any(answer.values())
        ),
        timeout=30,
        what="Celery to forget the running request",
    )
    assert trace_of(rclient, tag).count("start:clean") == 1
    terminate_with_the_command(workers, rclient, tag, run, task_id)


@pytest.mark.parametrize("how", ["command", "asyncresult"])
def test_terminate_of_an_eager_successor_kills_its_pool_process(workers, rclient, tag, how):
    """An eager successor runs inside the message of the node before it (executor/eager.py):
    no request Celery received, so Celery's own terminate does not find it. The worker's
    TerminateStep reads its copy of the control message, cancels the run naming the
    signal and kills the pool process, as Celery does for a request."""
    flow = step.bind(id="first", name="first") >> pid_step.bind(id="clean", name="clean", delay=60)
    run = flow.submit({"tag": tag}, app=workers.app)
    wait_for(
        lambda: any(e.startswith("pid:clean:") for e in trace_of(rclient, tag)),
        timeout=60,
        what="node clean to start",
    )
    pid = int(next(e for e in trace_of(rclient, tag) if e.startswith("pid:clean:")).split(":")[2])
    status = run.status()
    assert status.nodes["clean"].worker == status.nodes["first"].worker  # run eagerly
    task_id = f"{run.id}:clean"
    if how == "command":
        done = workers.celery("control", "terminate", "SIGTERM", task_id)
        assert done.returncode == 0, done.stderr
    else:
        workers.app.AsyncResult(task_id).revoke(terminate=True, signal="SIGTERM")
    status = cancelled_by(run, "clean")
    assert "terminated with signal 15" in status.error["message"], status.error
    wait_for(lambda: not _alive(pid), timeout=20, what="the pool process to be killed")
    assert "end:clean" not in trace_of(rclient, tag)
    assert workers.app.AsyncResult(task_id).state == "REVOKED"
    time.sleep(1)  # the message that started the chain comes back (a lost worker): no rerun
    assert trace_of(rclient, tag).count("start:first") == 1
    assert run.status().state == "cancelled"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


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
    # long enough for the `celery` command to start and reach the workers under load (15 s
    # was not, once, with the host taking two thirds of this VM's CPU)
    flow = slow.bind(id="first", name="first", delay=30.0) >> step.bind(id="after", name="after")
    run = flow.submit({"tag": tag}, app=workers.app)
    done = workers.celery("control", "revoke", f"{run.id}:after")
    assert done.returncode == 0, done.stderr
    cancelled_by(run, "after", within=30)
    assert "end:first" not in trace_of(rclient, tag)  # cancelled while first still ran
    wait_for(lambda: "end:first" in trace_of(rclient, tag), timeout=90, what="first to end")
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
    # Celery sends task_revoked from the worker's main process after the kill, through
    # the receivers before the test's (celery-graph's cancels the run): wait for it. Under
    # load the revoke can come before the main process has read that the pool started the
    # task: Celery then kills the pool process through the job's ApplyResult, and reports
    # "terminated" only once it reads the start; when that is lost with the process, the
    # message comes back (reject on worker lost) and is discarded as revoked
    revoked = f"task_revoked {two.id}:clean"
    wait_for(
        lambda: any(e.startswith(revoked) for e in workers.signals(rclient)),
        timeout=30,
        what="task_revoked",
    )
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


def test_a_node_result_is_written_without_reading_the_backend_first(app, monkeypatch):
    """Celery's store_result reads a task's state before it writes (so as not to write
    over a SUCCESS): a round trip a step. A node's SUCCESS, the same value whenever it is
    written, is written as store_result writes it without that read
    (engine/results.py): over a FAILURE (the node ran again after a resume) as Celery
    would, and over a SUCCESS alike."""
    backend = app.backend
    task_id = f"{uuid.uuid4().hex}:node"
    message = NodeMessage("0" * 64, task_id.split(":")[0], "node")
    backend.store_result(task_id, ValueError("first attempt"), "FAILURE")
    reads: list[str] = []
    read = backend.get
    monkeypatch.setattr(backend, "get", lambda key: reads.append(key) or read(key))
    store_success(app, message, [1, 2])  # over the FAILURE
    store_success(app, message, [1, 2])  # over its own SUCCESS
    monkeypatch.undo()
    assert reads == []
    result = app.AsyncResult(task_id)
    assert (result.state, result.result) == ("SUCCESS", [1, 2])
    # what store_result itself writes, field for field (the date aside)
    written = backend.get_task_meta(task_id, cache=False)
    expected_id = f"{uuid.uuid4().hex}:node"
    backend.store_result(expected_id, [1, 2], "SUCCESS")
    expected = backend.get_task_meta(expected_id, cache=False)
    for meta in (written, expected):
        meta.pop("date_done"), meta.pop("task_id")
    assert written == expected


def test_a_node_result_goes_in_the_graph_call_when_the_backend_is_the_graph_redis(
    app, redis_url, monkeypatch
):
    """The tests' app keeps its results in the graph Redis (one server, one database):
    each node's SUCCESS is sent in the round trip of the call that completes it
    (engine/results.py success_writes), never through the backend's own write, and it is
    what Celery's write is: the key, and a PUBLISH that AsyncResult subscribers hear."""
    own_writes: list[bytes] = []
    kind = type(app.backend)  # per thread: the worker's is another instance
    write = kind._set
    monkeypatch.setattr(
        kind, "_set", lambda b, key, *a: own_writes.append(key) or write(b, key, *a)
    )
    listener = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
    listener.psubscribe("celery-task-meta-*")
    try:
        listener.get_message(timeout=1)  # the subscription is in place
        run = (extract >> transform).apply_async()
        assert run.get(timeout=30) == [10, 20, 30]
        heard: dict[str, dict] = {}
        deadline = time.monotonic() + 10
        while len(heard) < 2 and time.monotonic() < deadline:
            message = listener.get_message(timeout=0.5)
            if message and run.id in message["channel"].decode():
                heard[message["channel"].decode()] = json.loads(message["data"])
    finally:
        listener.close()
    for node_id, value in (("extract", [1, 2, 3]), ("transform", [10, 20, 30])):
        task_id = f"{run.id}:{node_id}"
        assert heard[f"celery-task-meta-{task_id}"]["result"] == value
        assert heard[f"celery-task-meta-{task_id}"]["status"] == "SUCCESS"
        assert app.AsyncResult(task_id).result == value
        ttl = redis.Redis.from_url(redis_url).ttl(f"celery-task-meta-{task_id}")
        assert 0 < ttl <= app.backend.expires
    assert [k for k in own_writes if run.id.encode() in k] == []


def test_a_node_result_goes_through_the_backend_when_it_is_another_redis(app, redis_url):
    """Another database of the server (or another server, a Sentinel, a subclass of
    Celery's backend): no riding along, the backend writes as store_success does."""
    message = NodeMessage("0" * 64, uuid.uuid4().hex, "node")
    state = state_for(app)
    writes = success_writes(app, message, [1], None, state)
    assert writes is not None
    assert [c[0] for c in writes.commands] == ["SETEX", "PUBLISH"]
    other = new_app("other-db", redis_url, result_backend=redis_url.rsplit("/", 1)[0] + "/5")
    assert success_writes(other, message, [1], None, state) is None
    named = redis_url.replace("127.0.0.1", "localhost")
    assert (
        success_writes(
            new_app("by-name", redis_url, result_backend=named), message, [1], None, state
        )
        is None
    )


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


def test_the_watch_cancels_a_revoked_node_it_does_not_hold_at_the_first_look(app):
    run = unconsumed.as_graph().apply_async()
    watch = RevokeWatch(app, revoked_ids=lambda: [f"{run.id}:unconsumed"], active_ids=list)
    assert watch.scan() == [f"{run.id}:unconsumed"]
    with pytest.raises(RunCancelled, match="node 'unconsumed' revoked"):
        run.get(timeout=10)


def test_the_watch_on_revoked_ids_cancels_once_and_ignores_other_ids(app):
    """RevokeWatch alone (the workers' thread), over a given list of revoked ids: a node
    whose message waits in a queue nobody consumes."""
    run = unconsumed.as_graph().apply_async()
    ids = [str(uuid.uuid4()), f"{run.id}:unconsumed", f"{uuid.uuid4().hex}:gone"]
    held = ids[1:2]
    watch = RevokeWatch(app, revoked_ids=lambda: ids, active_ids=lambda: held)
    for _ in range(HOLD_LOOKS):  # held here: a terminate would report itself first
        assert watch.scan() == []
    assert watch.scan() == [f"{run.id}:unconsumed"]  # still held: a revoke, not a terminate
    assert watch.scan() == []  # each id is acted on once
    with pytest.raises(RunCancelled, match="node 'unconsumed' revoked"):
        run.get(timeout=10)
    assert app.AsyncResult(f"{run.id}:unconsumed").state == "REVOKED"


def test_the_watch_words_a_terminate_it_saw_for_a_node_it_holds_at_once(app):
    """A terminate TerminateStep noted (worker/revokes.py ``_terminating``) for a node this
    worker holds is worded "terminated" at the first look: Celery reports it only once
    the pool process's start is read, which under load came after two looks (a flaky
    "revoked" on Celery 5.3)."""
    run = unconsumed.as_graph().apply_async()
    task_id = f"{run.id}:unconsumed"
    _terminating[task_id] = 15
    watch = RevokeWatch(app, revoked_ids=lambda: [task_id], active_ids=lambda: [task_id])
    assert watch.scan() == [task_id]
    assert task_id not in _terminating
    with pytest.raises(
        RunCancelled, match=r"node 'unconsumed' revoked \(task .*, terminated with signal 15\)"
    ):
        run.get(timeout=10)
    assert app.AsyncResult(task_id).state == "REVOKED"


def test_the_control_messages_that_terminate_on_a_worker():
    """What TerminateStep reads from a broadcast control message (kombu's Mailbox body):
    Celery's revoke with terminate and its terminate command, to every worker, to this
    one or to a pattern it matches; nothing for a revoke without terminate or another
    worker's message."""
    me = "w1@host"

    def body(method, arguments, **where):
        return {"method": method, "arguments": arguments, "destination": None, **where}

    revoke = {"task_id": "r:a", "terminate": True, "signal": "SIGKILL"}
    assert _terminated_ids(body("revoke", revoke), me) == ({"r:a"}, "SIGKILL")
    both = {"task_id": ["r:a", "r:b"], "terminate": True, "signal": None}
    assert _terminated_ids(body("revoke", both), me) == ({"r:a", "r:b"}, "SIGTERM")
    command = {"signal": "SIGTERM", "task_id": "r:a"}
    assert _terminated_ids(body("terminate", command), me) == ({"r:a"}, "SIGTERM")
    assert _terminated_ids(body("revoke", {"task_id": "r:a"}), me) == (set(), "")
    assert _terminated_ids(body("revoke", revoke, destination=["w2@host"]), me) == (set(), "")
    assert _terminated_ids(body("revoke", revoke, destination=[me]), me)[0] == {"r:a"}
    glob = body("revoke", revoke, pattern="w1@*", matcher="glob")
    assert _terminated_ids(glob, me)[0] == {"r:a"}
    assert _terminated_ids(glob, "w2@host") == (set(), "")
    assert _terminated_ids(body("ping", {}), me) == (set(), "")
    assert _terminated_ids("not a dict", me) == (set(), "")
