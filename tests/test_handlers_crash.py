"""A worker SIGKILLed while a failure handler or a compensation runs (the step's lease
runs out, the reconciler sends it again, and the run ends once, as it should), or while a
wait is pending (it holds no worker: the run goes on with another one), or while a child
run runs (its node is sent again, and the child's end completes the parent's node)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from celery_graph import GraphRun, RunFailed
from celery_graph import wait_for as wait_node
from celery_graph.model import child_run_id
from tests.after_tasks import (
    alert,
    charge,
    per_customer,
    prepare,
    release,
    reserve,
    ship,
    ship_if_approved,
    summary,
)
from tests.support.helpers import wait_for
from tests.support.processes import Workers
from tests.tasks import read_trace


@pytest.fixture()
def workers(redis_url: str) -> Iterator[Workers]:
    with Workers(redis_url) as w:
        yield w


def _kill_while_running(workers: Workers, run, step: str) -> str:
    status = wait_for(
        lambda: (s := run.status()).steps.get(step) and s.steps[step].state == "running" and s,
        timeout=30,
        what=f"step {step} to start",
    )
    victim = status.steps[step].worker
    workers.kill(victim)
    return victim


def test_worker_killed_during_the_failure_handler(workers, tag):
    workers.start("a")
    workers.start("b")
    flow = (charge >> ship).on_failure(alert.bind(delay=3.0))
    run = flow.submit({"tag": tag}, app=workers.app)
    victim = _kill_while_running(workers, run, "alert")
    assert run.status().state == "finishing"
    with pytest.raises(RunFailed) as info:
        run.get(timeout=90)
    assert info.value.node_id == "ship"
    status = run.status()
    assert status.state == "failed"
    assert status.steps["alert"].state == "succeeded"
    assert status.steps["alert"].attempts == 2
    assert status.steps["alert"].worker != victim
    trace = read_trace(tag)
    # the killed attempt never got to its trace
    assert len([e for e in trace if e.startswith("alert:")]) == 1, trace


def test_worker_killed_during_a_compensation(workers, tag):
    workers.start("a")
    workers.start("b")
    flow = charge >> reserve.compensate(release.bind(delay=3.0)) >> ship
    run = flow.submit({"tag": tag}, app=workers.app)
    _kill_while_running(workers, run, "reserve.undo")
    with pytest.raises(RunFailed):
        run.get(timeout=90)
    status = run.status()
    assert status.state == "failed"
    assert status.steps["reserve.undo"].state == "succeeded"
    assert status.steps["reserve.undo"].attempts == 2
    trace = read_trace(tag)
    assert trace.count('release:{"reserved": "book"}') == 1, trace


def test_worker_killed_while_a_wait_is_pending(workers, tag):
    """The wait holds no worker: its worker dies, the signal comes while no worker is up,
    a new worker finishes the run; a second wait times out through the new worker's
    reconciler."""
    first = workers.start("a")
    flow = prepare >> wait_node("approval") >> ship_if_approved
    run = flow.submit({"tag": tag}, app=workers.app)
    timed = (prepare >> wait_node("approval", timeout=3) >> ship_if_approved).submit(
        {"tag": tag}, app=workers.app
    )
    for r in (run, timed):
        wait_for(lambda r=r: r.status().nodes["approval"].state == "waiting", what="the wait")
    workers.kill(first)
    assert run.signal("approval", {"approved": True, "by": "ana"}) is True
    workers.start("b")
    assert run.get(timeout=60) == "shipped"
    with pytest.raises(RunFailed) as info:
        timed.get(timeout=60)
    assert info.value.exc_type == "WaitTimeout"
    assert read_trace(tag).count('ship:{"approved": true, "by": "ana"}') == 1


def test_worker_killed_while_a_child_runs(workers, tag):
    """The child's node loses its worker: the reconciler sends it again, the child ends,
    and its end completes the parent's node."""
    workers.start("a")
    workers.start("b")
    flow = per_customer.bind(delay=3.0) >> summary
    run = flow.submit({"customer": "acme", "tag": tag}, app=workers.app)
    kid = GraphRun(child_run_id(run.id, "per_customer"), app=workers.app)

    def child_running():
        if "per_customer" not in run.status().children:
            return None  # the parent's node has not started its child yet
        status = kid.status()
        return status if status.nodes["invoice"].state == "running" else None

    status = wait_for(child_running, timeout=60, what="the child's node to start")
    assert run.status().nodes["per_customer"].state == "child"
    workers.kill(status.nodes["invoice"].worker)
    assert run.get(timeout=90) == {"invoiced": {"customer": "acme", "total": 4}}
    assert kid.status().nodes["invoice"].attempts == 2
    assert read_trace(tag).count("summary") == 1
