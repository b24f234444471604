"""Eager successors (executor/eager.py): a node's only released successor runs next in
the same worker, without a broker message, through Celery's tracer under its own task id.
Counted with Celery's before_task_publish (the `published` fixture) and task_prerun."""

from __future__ import annotations

import pytest

from celery_graph import RunCancelled, RunFailed, Sequence, result_of
from celery_graph.executor import eager
from celery_graph.state import state_for
from tests.support.helpers import wait_for
from tests.tasks import (
    add,
    always_published,
    boom,
    double,
    fails_then_ok,
    flaky,
    step,
    unconsumed,
)


def node_messages(published: list[dict], run_id: str) -> list[str]:
    """The task ids of the node messages of ``run_id`` sent to the broker."""
    ids = [m["headers"].get("id", "") for m in published]
    return [i for i in ids if i.startswith(f"{run_id}:")]


@pytest.fixture()
def conf(app):
    """Set app settings for one test."""
    saved: dict[str, object] = {}

    def set_(**values):
        for k, v in values.items():
            saved.setdefault(k, app.conf.get(k))
            app.conf[k] = v

    yield set_
    for k, v in saved.items():
        app.conf[k] = v


def steps(n: int, prefix: str = "s") -> Sequence:
    return Sequence(tuple(step.bind(id=f"{prefix}{i}", name=f"{prefix}{i}") for i in range(n)))


def test_three_steps_publish_the_first_node_only(app, published, started, tag):
    run = steps(3).submit({"tag": tag}, app=app)
    assert run.get(timeout=30) == "s2"
    assert node_messages(published, run.id) == [f"{run.id}:s0"]
    # Celery's tracer ran each node once, under its own task id (task_prerun, task_success)
    assert [t for t in started if t.startswith(run.id)] == [f"{run.id}:s{i}" for i in range(3)]
    status = run.status()
    assert {status.nodes[f"s{i}"].attempts for i in range(3)} == {1}
    assert len({status.nodes[f"s{i}"].worker for i in range(3)}) == 1


def test_each_successor_begins_in_the_call_that_completes_the_node_before_it(app, tag):
    """complete_begin.lua: a successor kept for the worker is leased as running by the
    call that completes its predecessor (one round trip a step), never queued."""
    run = steps(3).submit({"tag": tag}, app=app)
    assert run.get(timeout=30) == "s2"
    nodes = state_for(app).runs.node_fields(run.id)
    for before, after in (("s0", "s1"), ("s1", "s2")):
        finished = nodes[f"{before}:run"].split("|")[2]
        assert nodes[f"{after}:run"].split("|")[1] == finished, nodes
        assert nodes[f"{after}:queued"] == nodes[f"{after}:sent"] == finished


def test_a_successor_begun_ahead_reads_its_predecessors_result_and_an_earlier_one(app, tag):
    flow = add.bind(x=2, y=3) >> double >> add.bind(id="again", x=result_of(add), y=1)
    run = flow.submit(app=app)
    assert run.get(timeout=30) == 6
    assert run.results() == {"add": 5, "double": 10, "again": 6}
    status = run.status()
    assert {n.attempts for n in status.nodes.values()} == {1}


def test_a_successor_revoked_once_begun_ahead_is_handed_back_and_its_run_cancelled(
    app, monkeypatch, started, tag
):
    """A revoke that reaches the worker after the check made before complete_begin.lua
    (which leased the successor as running for this worker): the successor is handed
    back (queued again) and published, so the worker discards it as Celery does and the
    run is cancelled, naming it; it never runs."""
    from celery.worker import state as worker_state

    checked = eager.Keeper.ahead
    revoked: list[str] = []

    def ahead_then_revoked(self, node, task_id):
        ok = checked(self, node, task_id)
        if ok and node.id == "b":
            worker_state.revoked.add(task_id)  # the revoke arrives right after the check
            revoked.append(task_id)
        return ok

    monkeypatch.setattr(eager.Keeper, "ahead", ahead_then_revoked)
    try:
        flow = step.bind(id="a", name="a") >> step.bind(id="b", name="b")
        run = flow.submit({"tag": tag}, app=app)
        with pytest.raises(RunCancelled, match="node 'b' revoked"):
            run.get(timeout=30)
        assert revoked == [f"{run.id}:b"]
        assert f"{run.id}:b" not in started
        nodes = state_for(app).runs.node_fields(run.id)
        assert nodes["b:run"].split("|")[0] == "1"  # the attempt complete_begin.lua began
        assert float(nodes["b:queued"]) > float(nodes["b:sent"])  # handed back, queued again
    finally:
        for task_id in revoked:
            worker_state.revoked.discard(task_id)


def test_twenty_steps_publish_once_per_depth(app, conf, published, tag):
    conf(graph_eager_depth=16)
    run = steps(20).submit({"tag": tag}, app=app)
    assert run.get(timeout=60) == "s19"
    # s0 from the client; s1..s16 eager (the depth), s17 published, s18 and s19 eager
    assert node_messages(published, run.id) == [f"{run.id}:s0", f"{run.id}:s17"]
    assert run.results() == {f"s{i}": f"s{i}" for i in range(20)}


def test_twenty_steps_are_one_message_by_default(app, published, tag):
    run = steps(20).submit({"tag": tag}, app=app)  # graph_eager_depth: 64
    assert run.get(timeout=60) == "s19"
    assert node_messages(published, run.id) == [f"{run.id}:s0"]


def test_a_chain_that_ran_graph_eager_seconds_publishes_its_next_successor(
    app, conf, published, tag
):
    """The time bound: after 0.5 s of eager successors the next one is published (its
    message is acknowledged well inside the broker's visibility timeout), whatever the
    depth."""
    conf(graph_eager_seconds=0.5)
    flow = Sequence(tuple(step.bind(id=f"s{i}", name=f"s{i}", delay=0.4) for i in range(6)))
    run = flow.submit({"tag": tag}, app=app)
    assert run.get(timeout=60) == "s5"
    sent = node_messages(published, run.id)
    # s0 from the client; each message then runs one or two successors of 0.4 s: 2 or 3
    # messages (the depth alone, 64, would have published s0 only)
    assert sent[0] == f"{run.id}:s0" and 2 <= len(sent) <= 3, sent


def test_the_setting_turns_it_off(app, conf, published, tag):
    conf(graph_eager_successors=False)
    run = steps(3).submit({"tag": tag}, app=app)
    assert run.get(timeout=30) == "s2"
    assert node_messages(published, run.id) == [f"{run.id}:s{i}" for i in range(3)]


def test_a_task_declared_graph_eager_false_is_published(app, published, tag):
    flow = (
        step.bind(id="a", name="a")
        >> always_published.bind(id="b", name="b")
        >> step.bind(id="c", name="c")
    )
    run = flow.submit({"tag": tag}, app=app)
    assert run.get(timeout=30) == "c"
    # b is published; c, after b, runs in b's worker
    assert node_messages(published, run.id) == [f"{run.id}:a", f"{run.id}:b"]


def test_a_fan_out_and_a_join_are_published(app, published, tag):
    flow = (
        step.bind(id="a", name="a")
        >> (step.bind(id="b", name="b") | step.bind(id="c", name="c"))
        >> step.bind(id="d", name="d")
    )
    run = flow.submit({"tag": tag}, app=app)
    assert run.get(timeout=30) == "d"
    assert sorted(node_messages(published, run.id)) == [f"{run.id}:{n}" for n in "abcd"]


def test_a_queue_this_worker_does_not_consume_is_published(app, published, tag):
    run = (step.bind(id="a", name="a") >> unconsumed.bind(id="b")).submit({"tag": tag}, app=app)
    wait_for(
        lambda: f"{run.id}:b" in node_messages(published, run.id),
        timeout=30,
        what="b to be published",
    )
    assert run.status().nodes["b"].state in ("queued", "released", "pending")
    run.cancel()


def test_an_eager_successor_retried_by_celery_is_published_and_completes(app, published, tag):
    flow = step.bind(id="a", name="a") >> flaky.bind(id="f", fail_times=2)
    run = flow.submit({"tag": tag}, app=app)
    assert run.get(timeout=60) == 3
    # f ran in a's worker first; its two retries are messages of its own task id
    assert node_messages(published, run.id) == [f"{run.id}:a", f"{run.id}:f", f"{run.id}:f"]


def test_an_eager_successor_with_node_retries_then_success(app, published, tag):
    flow = step.bind(id="a", name="a") >> fails_then_ok.bind(id="f").with_retries(2, delay=0)
    run = flow.submit({"tag": tag}, app=app)
    assert run.get(timeout=60) == 2
    assert node_messages(published, run.id) == [f"{run.id}:a", f"{run.id}:f"]


def test_an_eager_successor_that_fails_fails_the_run(app, tag):
    flow = step.bind(id="a", name="a") >> boom.bind(id="b") >> step.bind(id="c", name="c")
    run = flow.submit({"tag": tag}, app=app)
    with pytest.raises(RunFailed) as failed:
        run.get(timeout=30)
    assert "boom went the node" in str(failed.value)
    assert run.status().nodes["c"].state != "succeeded"


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_in_a_worker_process_each_successor_runs_under_its_own_request(redis_url, tag, pool):
    """A `celery worker` protects the request stack of a task called inside itself (on
    Celery 5.3 the successor, the same task as the node before it, saw an empty request:
    no id, no host, and recorded the machine's host name instead of the worker's); each
    node records the worker's host name."""
    from tests.support.processes import Workers

    workers = Workers(redis_url, pool=pool, isolate=True)
    try:
        workers.start("a")
        run = steps(3).submit({"tag": tag}, app=workers.app)
        assert run.get(timeout=30) == "s2"
        status = run.status()
        hosts = {status.nodes[f"s{i}"].worker for i in range(3)}
        assert len(hosts) == 1 and hosts.pop().startswith("a-"), status.nodes
    finally:
        workers.stop()
