"""The barrier contract, against real Redis: arrivals are set members, a release happens
once, and a duplicate never counts twice or publishes twice."""

from __future__ import annotations

import threading
import time
import uuid

from celery_graph.protocol import task_id_for
from celery_graph.state import state_for
from tests.helpers import postruns, wait_for
from tests.tasks import join_count, read_trace, step


def pd(arrival) -> tuple[list[str], list[str]]:
    """(publish, deferred) of a complete.lua answer, for compact checks."""
    return arrival.publish, arrival.deferred


def _start_run(state, spec) -> str:
    run_id = uuid.uuid4().hex
    state.runs.create(run_id, spec, "{}", {})
    return run_id


def test_duplicate_arrival_counts_once_and_release_is_claimed_once(app):
    state = state_for(app)
    grace = state.scripts.release_grace
    a, b, c = (step.bind(id=n) for n in "abc")
    spec = ((a | b | c) >> join_count).compile()
    run_id = _start_run(state, spec)
    node = spec.nodes
    complete = state.scripts.complete
    assert pd(complete(spec, run_id, node["a"], '"a"')) == ([], [])
    # a duplicate of a: stored already, still only one arrival
    assert complete(spec, run_id, node["a"], '"a"') == (0, False, [], [], [])
    assert pd(complete(spec, run_id, node["b"], '"b"')) == ([], [])
    released_at = time.time()
    assert pd(complete(spec, run_id, node["c"], '"c"', now=released_at)) == (["join_count"], [])
    # released, not yet marked published: a duplicate within the grace period is deferred
    # (its message comes back later) instead of publishing a second time...
    assert pd(complete(spec, run_id, node["a"], '"a"', now=released_at + 1)) == (
        [], ["join_count"])
    # ...and after the grace period the releaser is presumed dead: the publish is recovered
    late = released_at + grace + 1
    assert pd(complete(spec, run_id, node["c"], '"c"', now=late)) == (["join_count"], [])
    assert pd(complete(spec, run_id, node["b"], '"b"', now=late + 1)) == ([], ["join_count"])
    state.scripts.mark_published(run_id, ["join_count"])
    for n in "abc":
        assert pd(complete(spec, run_id, node[n], f'"{n}"', now=late + 2 * grace)) == ([], [])
    assert state.client.scard(state.keys.join(run_id, "join_count")) == 3


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
    state.scripts.mark_published(run_id, ["join_count"])
    # after the publish mark, no arrival (duplicate or redelivery) hands it out again
    for i in range(40):
        assert pd(state.scripts.complete(spec, run_id, spec.nodes[f"m{i}"], "1")) == ([], [])


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


def test_crash_between_release_and_publish_is_recovered_by_redelivery(app, tag):
    """The releasing arrival claims the join and dies before publishing it. When its
    message is redelivered, the worker first defers (the releaser might still be
    publishing), then after the grace period publishes the join itself, once."""
    from celery_graph import GraphRun

    app.conf.graph_release_grace = 1
    try:
        state = state_for(app)
        a, b = step.bind(id="a", name="a"), step.bind(id="b", name="b")
        spec = ((a | b) >> join_count.bind(tag=tag)).compile()
        run_id = _start_run(state, spec)
        complete = state.scripts.complete
        assert complete(spec, run_id, spec.nodes["a"], '"a"').publish == []
        assert complete(spec, run_id, spec.nodes["b"], '"b"').publish == ["join_count"]
        # ...the worker that released join_count crashed here; b's message comes back:
        app.send_task(
            spec.nodes["b"].task,
            kwargs={"name": "b", "_graph": {"g": spec.graph_id, "r": run_id, "n": "b"}},
            task_id=task_id_for(run_id, "b"),
        )
        assert GraphRun(run_id, app=app).get(timeout=30) == "join_count"
    finally:
        app.conf.graph_release_grace = None
    assert read_trace(tag).count("start:join_count") == 1
    assert int(app_client(app).get(f"cgtest-count:{tag}:join_count")) == 1
    assert state.client.hget(state.keys.nodes(run_id), "join_count:dispatch") == b"published"
