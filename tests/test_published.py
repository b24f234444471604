"""Messages sent ahead: a published node's one successor that has no other predecessor
goes to the broker while complete.lua's answer is on its way (NodeRun.send_ahead,
Scripts._overlapped), and a run's roots while start.lua's is (submit.py); a message that
reaches a worker before its release or its run asks begin.lua again shortly instead of
being dropped (NodeMessage.ahead). Counted with Celery's before_task_publish and
task_prerun, on the session's in-process worker."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from celery.signals import before_task_publish, task_prerun

from celery_graph import Sequence
from celery_graph.dispatch import publish_nodes
from celery_graph.state import state_for
from tests.support.helpers import wait_for
from tests.tasks import always_published, read_trace, unconsumed


@contextlib.contextmanager
def sent_during(monkeypatch, scripts, call: str) -> Iterator[list[tuple[str, bool]]]:
    """(task id, whether it was sent while ``scripts.<call>`` was running in the
    sending thread) of each message published in the block."""
    real = getattr(scripts, call)
    inside = threading.local()

    def wrapped(*args, **kwargs):
        inside.on = True
        try:
            return real(*args, **kwargs)
        finally:
            inside.on = False

    monkeypatch.setattr(scripts, call, wrapped)
    sent: list[tuple[str, bool]] = []

    def record(sender=None, headers=None, **_):
        sent.append((str((headers or {}).get("id", "")), getattr(inside, "on", False)))

    before_task_publish.connect(record, weak=False)
    try:
        yield sent
    finally:
        before_task_publish.disconnect(record)


@contextlib.contextmanager
def prerun_of(wanted: str) -> Iterator[threading.Event]:
    """An event set when task ``wanted`` starts in this process (task_prerun)."""
    seen = threading.Event()

    def record(task_id=None, **_):
        if task_id == wanted:
            seen.set()

    task_prerun.connect(record, weak=False)
    try:
        yield seen
    finally:
        task_prerun.disconnect(record)


def of_run(sent: list[tuple[str, bool]], run_id: str) -> list[tuple[str, bool]]:
    return [(t.split(":", 1)[1], during) for t, during in sent if t.startswith(run_id)]


def test_a_lone_successor_is_sent_while_its_release_is_on_its_way(app, tag, monkeypatch):
    """Each successor's message goes out during its predecessor's complete.lua call (not
    after its answer), once: the release that complete.lua answers is not sent again."""
    with sent_during(monkeypatch, state_for(app).scripts, "complete") as sent:
        flow = Sequence(
            tuple(always_published.bind(id=f"s{i}", tag=tag, name=f"s{i}") for i in range(4))
        )
        run = flow.apply_async()
        assert run.get(timeout=30) == "s3"
    # the root by the client; each successor once, while its predecessor completed
    assert of_run(sent, run.id) == [("s0", False), ("s1", True), ("s2", True), ("s3", True)]
    assert read_trace(tag) == [e for i in range(4) for e in (f"start:s{i}", f"end:s{i}")]


def test_a_message_ahead_of_its_release_asks_again_and_runs_in_that_delivery(app, tag, started):
    """A successor's message that a worker takes before its release reached Redis (its
    begin.lua answers "unreleased") asks again shortly and runs once released, in the
    same delivery: not dropped to wait for the reconciler's copy."""
    flow = unconsumed.bind(id="a") >> always_published.bind(id="s", tag=tag, name="s")
    run = flow.apply_async()  # "a" waits on a queue no worker consumes
    spec = run.spec()
    task_id = f"{run.id}:s"
    with prerun_of(task_id) as seen:
        publish_nodes(app, spec, run.id, ["s"], ahead=True)  # ahead of its release
        assert seen.wait(20)
        time.sleep(0.03)  # its first begin.lua has answered "unreleased" by now
        state = state_for(app)
        begun = state.scripts.begin(run.id, "a", "test@here", [], False, 0)
        assert begun.status == "running"
        arrival = state.scripts.complete(spec, run.id, spec.nodes["a"], "41")
        assert arrival.publish == ["s"]  # released; the test sends nothing more
        assert run.get(timeout=30) == "s"
    assert started.count(task_id) == 1  # one delivery: not the reconciler's copy
    assert read_trace(tag) == ["start:s", "end:s"]


def test_a_run_s_roots_are_sent_while_its_creation_is_on_its_way(app, tag, monkeypatch):
    """The roots' messages go out during start.lua's call, not after its answer, once."""
    from celery_graph import Parallel

    with sent_during(monkeypatch, state_for(app).scripts, "start") as sent:
        roots = Parallel(
            tuple(always_published.bind(id=f"r{i}", tag=tag, name=f"r{i}") for i in range(2))
        )
        run = roots.apply_async()
        assert run.get(timeout=30) == {"r0": "r0", "r1": "r1"}
    assert sorted(of_run(sent, run.id)) == [("r0", True), ("r1", True)]


def test_a_root_ahead_of_its_run_asks_again_and_runs_once_the_run_exists(app, tag, started):
    """A root's message sent ahead that a worker takes before start.lua created the run
    (begin.lua: no run) asks again shortly and runs in that delivery once it exists."""
    from celery_graph.client.submit import run_id_for

    flow = always_published.bind(id="r", tag=tag, name="r").as_graph()
    spec = flow.compile()
    run_id = run_id_for(None)
    with prerun_of(f"{run_id}:r") as seen:
        publish_nodes(app, spec, run_id, ["r"], ahead=True)  # before its run exists
        assert seen.wait(20)
        time.sleep(0.03)  # its first begin.lua has found no run by now
        created, _ = state_for(app).runs.create(run_id, spec, "{}")
        assert created
        from celery_graph import GraphRun

        assert GraphRun(run_id, app=app).get(timeout=30) == "r"
    assert started.count(f"{run_id}:r") == 1  # one delivery: not the reconciler's copy
    assert read_trace(tag) == ["start:r", "end:r"]


def test_a_root_sent_ahead_of_a_run_that_never_comes_is_dropped_not_failed(app, tag, caplog):
    """A root sent ahead whose run's creation never lands (its graph not stored) asks
    again for a while, then is dropped with a warning: nothing is run or recorded."""
    import logging
    import uuid

    from celery_graph.client.submit import run_id_for

    name = f"ghost-{uuid.uuid4().hex[:8]}"  # a graph no one stored
    spec = always_published.bind(id="r", tag=tag, name=name).as_graph().compile()
    run_id = run_id_for(None)
    caplog.set_level(logging.WARNING, logger="celery_graph.task")
    publish_nodes(app, spec, run_id, ["r"], ahead=True)
    wait_for(
        lambda: any("sent ahead of its run" in r.getMessage() for r in caplog.records),
        20,
        "the root to be dropped",
    )
    assert read_trace(tag) == []
    assert not state_for(app).runs.started(run_id)
