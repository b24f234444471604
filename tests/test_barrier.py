"""The barrier contract, against real Redis: arrivals are set members, a release happens
once, and a duplicate never counts twice or publishes twice."""

from __future__ import annotations

import threading
import uuid

from celery_graph.protocol import task_id_for
from celery_graph.state import state_for
from tests.support.helpers import postruns, wait_for
from tests.tasks import join_count, read_trace, step


def _start_run(state, spec) -> str:
    run_id = uuid.uuid4().hex
    state.runs.create(run_id, spec, "{}")
    return run_id


def test_duplicate_arrival_counts_once_and_release_is_marked_at_once(app):
    state = state_for(app)
    a, b, c = (step.bind(id=n) for n in "abc")
    spec = ((a | b | c) >> join_count).compile()
    run_id = _start_run(state, spec)
    node = spec.nodes
    complete = state.scripts.complete
    assert complete(spec, run_id, node["a"], '"a"').publish == []
    # a duplicate of a: stored already, still only one arrival
    assert complete(spec, run_id, node["a"], '"a"') == (0, 0, [], [], None)
    assert complete(spec, run_id, node["b"], '"b"').publish == []
    assert complete(spec, run_id, node["c"], '"c"').publish == ["join_count"]
    # released, marked published and leased in that same call: no copy of any arrival
    # hands it out again (a releaser that dies before publishing leaves the lease to run
    # out, and the reconciler publishes it)
    assert state.client.hget(state.keys.nodes(run_id), "join_count:state") == b"queued"
    assert state.client.zscore(state.keys.queued(run_id), "join_count") is not None
    for n in "abc":
        assert complete(spec, run_id, node[n], f'"{n}"').publish == []
    arrivals = state.client.hgetall(state.keys.join(run_id, "join_count"))
    assert {k for k in arrivals if not k.startswith(b"#")} == {b"a", b"b", b"c"}
    assert arrivals[b"#n"] == b"3"


def test_concurrent_arrivals_release_exactly_once(app):
    state = state_for(app)
    members = [step.bind(id=f"m{i}") for i in range(40)]
    flow = members[0]
    for m in members[1:]:
        flow = flow | m
    spec = (flow >> join_count).compile()
    run_id = _start_run(state, spec)
    claims: list[str] = []
    lock = threading.Lock()

    def arrive(i: int) -> None:
        got = state.scripts.complete(spec, run_id, spec.nodes[f"m{i}"], "1").publish
        with lock:
            claims.extend(got)

    threads = [threading.Thread(target=arrive, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert claims == ["join_count"]
    # once released, no arrival (duplicate or redelivery) hands it out again
    for i in range(40):
        assert state.scripts.complete(spec, run_id, spec.nodes[f"m{i}"], "1").publish == []


def test_delivered_duplicate_of_a_join_member_does_not_run_the_join_twice(app, tag):
    """A second copy of a member's message, delivered while the run is still going, is
    processed by the worker but neither re-runs the member nor releases the join again."""
    fast = step.bind(id="fast", name="fast")
    other = step.bind(id="other", name="other")
    slow = step.bind(id="slow_member", name="slow_member", delay=1.5)
    flow = (fast | other | slow) >> join_count
    with postruns() as done:
        run = flow.apply_async(tag=tag)
        fast_id = task_id_for(run.id, "fast")
        assert done.wait(fast_id)
        wait_for(lambda: "end:other" in read_trace(tag), what="other to finish")
        spec = flow.compile()
        app.send_task(
            spec.nodes["fast"].task,
            kwargs={"name": "fast", "_graph": {"g": spec.graph_id, "r": run.id, "n": "fast"}},
            task_id=fast_id,
        )
        assert done.wait(fast_id, times=2), "the duplicate was not processed"
        assert run.get(timeout=20) == "join_count"
    trace = read_trace(tag)
    assert trace.count("start:fast") == 1, trace
    assert trace.count("start:join_count") == 1, trace
    assert int(app_client(app).get(f"cgtest-count:{tag}:join_count")) == 1


def test_duplicate_after_the_run_finished_changes_nothing(app, tag):
    flow = (step.bind(id="x1", name="x1") | step.bind(id="x2", name="x2")) >> join_count
    run = flow.apply_async(tag=tag)
    assert run.get(timeout=20) == "join_count"
    spec = flow.compile()
    results_before = run.results()
    dup_id = task_id_for(run.id, "x1")
    with postruns() as done:
        app.send_task(
            spec.nodes["x1"].task,
            kwargs={"name": "x1", "_graph": {"g": spec.graph_id, "r": run.id, "n": "x1"}},
            task_id=dup_id,
        )
        assert done.wait(dup_id)
    assert run.results() == results_before
    assert read_trace(tag).count("start:x1") == 1
    assert read_trace(tag).count("start:join_count") == 1


def app_client(app):
    return state_for(app).client


def test_crash_between_release_and_publish_is_recovered_once_by_the_reconciler(app, tag, published):
    """The releasing arrival marks the join published and dies before sending it. A copy of
    its message that comes back publishes nothing (the join is marked); the join's lease
    runs out and the reconciler publishes it, once."""
    from celery_graph import GraphRun

    app.conf.graph_queued_lease = 1
    app.conf.graph_reconcile_interval = 0.2
    try:
        state = state_for(app)
        a, b = step.bind(id="a", name="a"), step.bind(id="b", name="b")
        spec = ((a | b) >> join_count.bind(tag=tag)).compile()
        run_id = _start_run(state, spec)  # roots leased; this test plays their worker
        complete = state.scripts.complete
        assert complete(spec, run_id, spec.nodes["a"], '"a"').publish == []
        assert complete(spec, run_id, spec.nodes["b"], '"b"').publish == ["join_count"]
        # ...the worker that released join_count crashed here; b's message comes back:
        with postruns() as done:
            app.send_task(
                spec.nodes["b"].task,
                kwargs={"name": "b", "_graph": {"g": spec.graph_id, "r": run_id, "n": "b"}},
                task_id=task_id_for(run_id, "b"),
            )
            assert done.wait(task_id_for(run_id, "b"))
        assert GraphRun(run_id, app=app).get(timeout=30) == "join_count"
    finally:
        app.conf.graph_queued_lease = None
        app.conf.graph_reconcile_interval = None
    sent = [m for m in published if (m["body"][1].get("_graph") or {}).get("r") == run_id]
    assert [m["body"][1]["_graph"]["n"] for m in sent].count("join_count") == 1
    assert read_trace(tag).count("start:join_count") == 1
    assert int(app_client(app).get(f"cgtest-count:{tag}:join_count")) == 1
    status = GraphRun(run_id, app=app).status()
    assert status.nodes["join_count"].redelivered == 1
