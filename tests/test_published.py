"""A published step (eager successors off, or a successor on another queue): a node's
one successor that has no other predecessor is sent to the broker while complete.lua's
answer is on its way (NodeRun.send_ahead, Scripts._overlapped), and a message that
reaches a worker before its release asks begin.lua again shortly instead of being
dropped. Counted with Celery's before_task_publish and task_prerun, on the session's
in-process worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from celery.signals import before_task_publish, task_prerun

from celery_graph import Sequence
from celery_graph.dispatch import publish_nodes
from celery_graph.state import state_for
from tests.tasks import always_published, read_trace, unconsumed


@pytest.fixture()
def started() -> Iterator[list[str]]:
    """The task ids of every task run in this process (task_prerun), in order."""
    seen: list[str] = []

    def record(task_id=None, **_):
        seen.append(task_id)

    task_prerun.connect(record, weak=False)
    try:
        yield seen
    finally:
        task_prerun.disconnect(record)


def test_a_lone_successor_is_sent_while_its_release_is_on_its_way(app, tag, monkeypatch):
    """Each successor's message goes out during its predecessor's complete.lua call (not
    after its answer), once: the release that complete.lua answers is not sent again."""
    scripts = state_for(app).scripts
    real = scripts.complete
    inside = threading.local()

    def complete(*args, **kwargs):
        inside.on = True
        try:
            return real(*args, **kwargs)
        finally:
            inside.on = False

    monkeypatch.setattr(scripts, "complete", complete)
    sent: list[tuple[str, bool]] = []

    def record(sender=None, headers=None, **_):
        sent.append((str((headers or {}).get("id", "")), getattr(inside, "on", False)))

    before_task_publish.connect(record, weak=False)
    try:
        flow = Sequence(
            tuple(always_published.bind(id=f"s{i}", tag=tag, name=f"s{i}") for i in range(4))
        )
        run = flow.apply_async()
        assert run.get(timeout=30) == "s3"
    finally:
        before_task_publish.disconnect(record)
    mine = [
        (task_id.split(":", 1)[1], during) for task_id, during in sent if task_id.startswith(run.id)
    ]
    # the root by the client; each successor once, while its predecessor completed
    assert mine == [("s0", False), ("s1", True), ("s2", True), ("s3", True)]
    assert read_trace(tag) == [e for i in range(4) for e in (f"start:s{i}", f"end:s{i}")]


def test_a_message_ahead_of_its_release_asks_again_and_runs_in_that_delivery(app, tag, started):
    """A successor's message that a worker takes before its release reached Redis (its
    begin.lua answers "unreleased") asks again shortly and runs once released, in the
    same delivery: not dropped to wait for the reconciler's copy."""
    flow = unconsumed.bind(id="a") >> always_published.bind(id="s", tag=tag, name="s")
    run = flow.apply_async()  # "a" waits on a queue no worker consumes
    spec = run.spec()
    task_id = f"{run.id}:s"
    seen = threading.Event()

    def record(task_id=None, **_):
        if task_id == f"{run.id}:s":
            seen.set()

    task_prerun.connect(record, weak=False)
    try:
        publish_nodes(app, spec, run.id, ["s"])  # ahead of its release
        assert seen.wait(20)
        time.sleep(0.03)  # its first begin.lua has answered "unreleased" by now
        state = state_for(app)
        begun = state.scripts.begin(run.id, "a", "test@here", [], False, 0)
        assert begun.status == "running"
        arrival = state.scripts.complete(spec, run.id, spec.nodes["a"], "41")
        assert arrival.publish == ["s"]  # released; the test sends nothing more
        assert run.get(timeout=30) == "s"
    finally:
        task_prerun.disconnect(record)
    assert started.count(task_id) == 1  # one delivery: not the reconciler's copy
    assert read_trace(tag) == ["start:s", "end:s"]
