"""Durable runs, in-process: each test reproduces a way a run could hang, lose work or
double it, against the real Redis and the real (in-process) worker with its reconciler.
The faults that need real processes to die are in test_durable_faults.py."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from celery import chain
from celery.signals import before_task_publish

from celery_graph import (
    BrokerUnavailable,
    GraphRun,
    Parallel,
    RunFailed,
    RunNotFound,
    workflow,
)
from celery_graph.codec import error_record
from celery_graph.engine.lifecycle import end_run
from celery_graph.executor.node import fail_node
from celery_graph.protocol import NodeMessage, task_id_for
from celery_graph.state import state_for
from celery_graph.state.graphs import GraphStore
from celery_graph.state.scripts import Scripts
from celery_graph.testing import free_port
from tests.support.apps import make_app
from tests.support.fixtures import SESSION
from tests.support.helpers import postruns, purge_queue, wait_for
from tests.support.monitor import Monitor, command
from tests.tasks import (
    UNCONSUMED_QUEUE,
    boom,
    branches_join_once,
    fail_slowly,
    fails_once_after,
    fails_then_ok,
    keys_of,
    left,
    merge,
    merge_items,
    offset,
    process,
    read_trace,
    right,
    right_more,
    route,
    slow,
    slow_item,
    slow_route,
    split,
    step,
    succeed_then_fail,
    trace_client,
    unconsumed,
    unconsumed_value,
    write_after_signal,
)


@pytest.fixture()
def fast_reconciler(app) -> Iterator[None]:
    """Short leases and sweeps, so the reconciler acts within about a second."""
    app.conf.graph_queued_lease = 1
    app.conf.graph_running_lease = 1.5
    app.conf.graph_reconcile_interval = 0.2
    try:
        yield
    finally:
        app.conf.graph_queued_lease = None
        app.conf.graph_running_lease = None
        app.conf.graph_reconcile_interval = None


def _create(app, flow, inputs: str = "{}") -> tuple[str, object]:
    """A run created in the state as submit does, whose messages this test sends itself."""
    spec = flow.compile()
    run_id = uuid.uuid4().hex
    state_for(app).runs.create(run_id, spec, inputs)
    return run_id, spec


def test_a_run_created_on_a_server_that_lost_its_scripts_is_listed_after_its_record(app, redis_url):
    """A server that lost its scripts (a restart, SCRIPT FLUSH) answers the EVALSHA of
    start.lua in the creation's round trip with NOSCRIPT; the script then runs alone. The
    listing for the reconciler must come after it too: a sweep in between finds the run
    listed without a record, drops it as gone, and no sweep ever looks at the run again
    (a node lost with its worker is never sent again: a chaos run hung so)."""
    spec = (step >> step.bind(id="b")).compile()
    run_id = uuid.uuid4().hex
    state = state_for(app)
    redis.Redis.from_url(redis_url).script_flush()  # the session's own server
    with Monitor(redis_url) as mon:
        state.runs.create(run_id, spec, "{}")
    lines = [line for line in mon.lines if not line.startswith("lua")]
    scripts = [i for i, line in enumerate(lines) if command(line) == "evalsha" and run_id in line]
    assert len(scripts) >= 2, lines  # the one that met NOSCRIPT, the one that ran
    index = state.keys.running_index()
    listed = [
        i
        for i, line in enumerate(lines)
        if command(line) == "zadd" and index in line and run_id in line
    ]
    assert listed and max(listed) > max(scripts), lines
    assert state.client.zscore(index, run_id) is not None


def test_every_script_call_loads_its_script_again_on_a_server_that_lost_them(app, redis_url):
    """Each script call on a server that lost its scripts (SCRIPT FLUSH, a restart) meets
    NOSCRIPT, loads the script and runs it: a run whose every step (begin, complete, their
    result backend writes) is called after a flush ends as it would have."""
    flow = step.bind(name="a") >> step.bind(id="b", name="b") >> step.bind(id="c", name="c")
    flow.compile()
    server = redis.Redis.from_url(redis_url)
    before = server.info("stats").get("total_error_replies", 0)
    server.script_flush()  # the session's own server
    assert flow.apply_async().get(timeout=30) == "c"
    # NOSCRIPT was answered (and dealt with) on the way
    assert server.info("stats").get("total_error_replies", 0) > before


def test_a_scripts_first_call_is_answered_before_what_goes_with_it(app, redis_url):
    """What goes while a script's answer is on its way (the roots of a new run, the one
    successor of a completing node) waits for the answer at the script's first call from a
    process: the server may not hold the script (NOSCRIPT), and a message sent meanwhile
    would reach a worker before the run exists. Later calls overlap as before."""
    state = state_for(app)
    scripts = Scripts(state.client, state.keys, state.settings)  # a new process's first calls
    redis.Redis.from_url(redis_url).script_flush()  # the session's own server
    spec = step.bind(id="only").compile()
    seen: list[object] = []

    def meanwhile(run_id: str) -> None:
        seen.append(state.client.hget(state.keys.run(run_id), "status"))

    first = uuid.uuid4().hex
    created, _ = scripts.start(first, spec, "{}", None, {}, meanwhile=lambda: meanwhile(first))
    assert created
    assert seen == [b"running"]  # the run existed when its roots would have gone
    second = uuid.uuid4().hex
    scripts.start(second, spec, "{}", None, {}, meanwhile=lambda: meanwhile(second))
    assert len(seen) == 2  # called once, while the answer was on its way or after it
    for run_id in (first, second):  # nobody sends their roots: ended here
        state.scripts.finish(run_id, "cancelled")


# -- failures ------------------------------------------------------------------------


def test_a_failing_copy_of_a_node_whose_result_is_stored_changes_nothing(app, tag):
    """Two copies of one message run at once (the second takes the node over from the
    first, as only a message the holding attempt sent may: "a": 1): the first stores its
    result, the second fails afterwards. The run goes on as the stored result says."""
    flow = succeed_then_fail.bind(tag=tag, ok_after=1.0, fail_after=1.5)
    flow = flow >> step.bind(name="after", tag=tag)
    spec = flow.compile()
    with postruns() as done:
        run = flow.apply_async()
        node_task = spec.nodes["succeed_then_fail"].task
        tid = task_id_for(run.id, "succeed_then_fail")
        wait_for(lambda: "start:succeed_then_fail:1" in read_trace(tag), what="the first copy")
        app.send_task(
            node_task,
            kwargs={
                "tag": tag,
                "ok_after": 1.0,
                "fail_after": 1.5,
                "_graph": {"g": spec.graph_id, "r": run.id, "n": "succeed_then_fail", "a": 1},
            },
            task_id=tid,
        )
        assert done.wait(tid, times=2, timeout=20), "both copies ran"
    assert run.get(timeout=20) == "after"
    trace = read_trace(tag)
    assert trace.count("start:succeed_then_fail:1") == 1
    assert trace.count("start:succeed_then_fail:2") == 1  # the failing copy did run
    assert run.status().state == "succeeded"
    assert run.results()["succeed_then_fail"] == "ok"


def test_a_group_policy_is_decided_in_the_same_call_as_the_failing_arrival(app):
    """The arrival of a failed critical member ends the run in the script itself: no
    crash between the arrival and a later check can let the run succeed."""
    a, b = step.bind(id="a"), step.bind(id="b")
    run_id, spec = _create(app, Parallel((a, b)).with_policy(critical=["a"]) >> step)
    state = state_for(app)
    arrival = state.scripts.complete(
        spec,
        run_id,
        spec.nodes["a"],
        "",
        kind="failed",
        error_json='{"type": "ValueError"}',
        traceback="tb",
    )
    assert arrival.ended == 2
    record = state.runs.record(run_id)
    assert arrival.record == record  # answered by the call that failed the run
    assert record["status"] == "failed"
    assert "critical member(s) a failed" in record["error"]
    # b arriving later cannot revive it
    assert state.scripts.complete(spec, run_id, spec.nodes["b"], '"b"').stored == -1


def test_a_tolerated_failure_released_join_lost_with_its_worker_is_published(
    app, tag, fast_reconciler
):
    """The tolerated failure is the arrival that releases the join, and its worker dies
    before publishing: the join's lease runs out and the reconciler publishes it once."""
    flow = Parallel((step.bind(id="ok", name="ok", tag=tag), boom.bind(tag=tag)))
    flow = flow.with_policy(best_effort=True) >> step.bind(id="join", name="join", tag=tag)
    run_id, spec = _create(app, flow)
    state = state_for(app)
    assert state.scripts.complete(spec, run_id, spec.nodes["ok"], '"ok"').publish == []
    failed = state.scripts.complete(
        spec, run_id, spec.nodes["boom"], "", kind="failed", error_json='{"type": "ValueError"}'
    )
    assert failed.publish == ["join"]  # ...and the worker died here
    assert GraphRun(run_id, app=app).get(timeout=30) == "join"
    assert read_trace(tag).count("start:join") == 1
    assert GraphRun(run_id, app=app).status().nodes["join"].redelivered == 1


def test_chunks_whose_messages_were_lost_are_sent_again(app, tag, fast_reconciler):
    """The worker that expanded a chunked map died before publishing the chunks: their
    leases ("<node>@<j>") run out, and the reconciler sends them again."""
    flow = split >> process.map("split", chunk=2) >> merge
    run_id, spec = _create(app, flow)
    state = state_for(app)
    source = json.dumps([f"item{i}" for i in range(5)])
    assert state.scripts.complete(spec, run_id, spec.nodes["split"], source).publish == ["process"]
    node = spec.nodes["process"]
    state.scripts.begin(run_id, "process", "test", node.upstream_ids(), expands=True)
    assert state.scripts.expand(run_id, node, 5)  # ...and the worker died here
    assert GraphRun(run_id, app=app).get(timeout=30) == [f"ITEM{i}" for i in range(5)]


def test_a_map_whose_last_item_arrived_without_completing_it_is_completed(
    app, tag, fast_reconciler
):
    """The worker of the map's last item stored it and counted it in, then died before
    completing the map node: the reconciler completes it (no broker redelivery needed)."""
    flow = split >> process.map("split") >> merge
    run_id, spec = _create(app, flow)
    state = state_for(app)
    source = json.dumps(["item0", "item1"])
    state.scripts.complete(spec, run_id, spec.nodes["split"], source)
    node = spec.nodes["process"]
    state.scripts.begin(run_id, "process", "test", node.upstream_ids(), expands=True)
    assert state.scripts.expand(run_id, node, 2)
    for i in range(2):
        state.scripts.begin(run_id, f"process#{i}", "test", node.pull_ids())
        arrived = state.scripts.map_arrive(run_id, node, i, 2, f'"ITEM{i}"')[1]
    assert arrived == 2  # ...and the worker died here, its message acked (acks_late off)
    assert GraphRun(run_id, app=app).get(timeout=30) == ["ITEM0", "ITEM1"]


@pytest.mark.parametrize("chunk", [None, 1], ids=["items", "chunks"])
def test_map_items_that_finish_after_a_cancel_keep_their_results(app, tag, chunk):
    """Items running when their run is cancelled store their results all the same; the
    resume counts them in without calling them again."""
    mapped = slow_item.map("split", chunk=chunk) if chunk else slow_item.map("split")
    flow = split >> mapped >> merge_items
    run = flow.apply_async(n=3, tag=tag)
    started = lambda: sum(e.startswith("start:item") for e in read_trace(tag))  # noqa: E731
    wait_for(lambda: started() == 3, timeout=20, what="the three items to start")
    assert run.cancel()
    stored = lambda: len(state_for(app).runs.results(run.id))  # noqa: E731
    wait_for(lambda: stored() == 4, timeout=20, what="split and the three items stored")
    run.resume()
    assert run.get(timeout=20) == ["ITEM0", "ITEM1", "ITEM2"]
    assert started() == 3


# -- the canvas around a graph --------------------------------------------------------


def test_a_tolerated_failure_that_ends_the_run_continues_the_canvas(app, tag):
    """The last sink to end is a member whose failure its group tolerates: the run
    succeeds, and the Celery chain around the graph goes on with its result."""
    flow = Parallel(
        (step.bind(id="quick", name="quick", tag=tag), fail_slowly.bind(tag=tag, delay=0.5))
    ).with_policy(best_effort=True)
    result = chain(flow.s(), keys_of.s()).apply_async()
    assert result.get(timeout=30) == ["fail_slowly", "quick"]


def test_a_continuation_lost_with_its_worker_is_done_by_the_reconciler(app, fast_reconciler):
    """The run ends without the hooks that follow (its worker died right after): the
    reconciler finds the ended run with a canvas still waiting, and continues it once."""
    with workflow("continued") as wf:
        wf.add(unconsumed_value)
    result = chain(wf.s(), offset.s(by=1000)).apply_async()
    try:
        # run_graph started the run; its root went to a queue nobody consumes
        run_id = wait_for(
            lambda: _run_with_continuation(app), timeout=20, what="the canvas step to start the run"
        )
        state = state_for(app)
        run = GraphRun(run_id, app=app)
        spec = run.spec()
        # play the worker that ran the node and died before the end-of-run hooks
        arrival = state.scripts.complete(spec, run_id, spec.nodes["unconsumed_value"], "41")
        assert arrival.ended == 1
        assert result.get(timeout=30) == 1041
        # marked done once the next step is sent: under load that can be after it ran
        wait_for(
            lambda: state.runs.record(run_id)["continued"] == "done",
            timeout=10,
            what="the continuation to be marked done",
        )
    finally:
        purge_queue(app, UNCONSUMED_QUEUE)


def _run_with_continuation(app) -> str | None:
    state = state_for(app)
    for run_id in state.runs.recent(5):
        record = state.runs.record(run_id)
        if "continuation" in record and record["status"] == "running":
            return run_id
    return None


# -- resume --------------------------------------------------------------------------


def test_resume_after_a_join_failed_behind_a_tolerated_failure(app, tag):
    flow = Parallel((boom.bind(tag=tag), step.bind(id="ok", name="ok", tag=tag)))
    flow = flow.with_policy(best_effort=True) >> fails_then_ok.bind(tag=tag, fail_times=1)
    run = flow.apply_async()
    with pytest.raises(RunFailed) as info:
        run.get(timeout=20)
    assert info.value.node_id == "fails_then_ok"
    run.resume()
    assert run.get(timeout=20) == 2
    trace = read_trace(tag)
    assert trace.count("start:boom") == 1  # its tolerated failure stands
    assert trace.count("start:ok") == 1


def test_resume_after_a_join_failed_behind_a_skipped_branch_does_not_run_the_branch(app, tag):
    flow = route.bind(tag=tag) >> (left.bind(tag=tag) | right.bind(tag=tag))
    flow = flow >> branches_join_once.bind(tag=tag)
    run = flow.apply_async(which="left")
    with pytest.raises(RunFailed):
        run.get(timeout=20)
    run.resume()
    assert run.get(timeout=20) == {"left": "left", "right": None}
    trace = read_trace(tag)
    assert "start:right" not in trace  # skipped by the branch, before and after resume
    assert trace.count("start:branches_join_once:2") == 1


def test_cancel_then_resume_does_not_run_a_running_node_twice(app, tag):
    flow = slow.bind(tag=tag, delay=2.0) >> step.bind(name="after", tag=tag)
    run = flow.apply_async()
    wait_for(lambda: "start:slow" in read_trace(tag), timeout=20, what="slow to start")
    assert run.cancel()
    run.resume()  # slow is still running under its lease: left to finish
    assert run.get(timeout=20) == "after"
    trace = read_trace(tag)
    assert trace.count("start:slow") == 1
    assert trace.count("start:after") == 1


def test_resume_after_a_sibling_finished_while_the_run_was_failed(app, tag):
    """slow is still running when its sibling fails the run; it finishes into the failed
    run (its result is kept, its arrival at the join is not made then): resume makes it,
    without calling slow again, and the join runs."""
    flow = step.bind(id="root", name="root", tag=tag)
    flow = flow >> (fails_once_after.bind(tag=tag) | slow.bind(tag=tag, delay=1.0))
    run = (flow >> step.bind(id="join", name="join", tag=tag)).apply_async()
    with pytest.raises(RunFailed):
        run.get(timeout=20)
    wait_for(lambda: "slow" in run.results(), timeout=20, what="slow to store its result")
    run.resume()
    assert run.get(timeout=20) == "join"
    trace = read_trace(tag)
    assert trace.count("start:slow") == 1 and trace.count("start:join") == 1


def test_resume_after_a_sink_finished_while_the_run_was_cancelled(app, tag):
    run = Parallel((slow.bind(tag=tag, delay=1.0), unconsumed)).apply_async()
    wait_for(lambda: "start:slow" in read_trace(tag), timeout=20, what="slow to start")
    try:
        assert run.cancel()
        wait_for(lambda: "slow" in run.results(), timeout=20, what="slow to store its result")
        run.resume()
        state = state_for(app)
        # play the worker of the other sink: the run ends when both have arrived
        spec = run.spec()
        state.scripts.begin(run.id, "unconsumed", "test", [])
        state.scripts.complete(spec, run.id, spec.nodes["unconsumed"], '"u"')
        assert run.get(timeout=20) == {"slow": "slow", "unconsumed": "u"}
    finally:
        purge_queue(app, UNCONSUMED_QUEUE)


def test_resume_after_a_critical_member_broke_its_policy_runs_it_again(app, tag):
    group = Parallel((step.bind(id="ok", name="ok", tag=tag), fails_then_ok.bind(tag=tag)))
    group = group.named("batch").with_policy(critical=["fails_then_ok"])
    run = (group >> step.bind(id="join", name="join", tag=tag)).apply_async()
    with pytest.raises(RunFailed) as info:
        run.get(timeout=20)
    assert "critical member(s) fails_then_ok failed" in info.value.exc_message
    run.resume()
    assert run.get(timeout=20) == "join"
    assert run.results()["fails_then_ok"] == 2  # it ran again, and its result counts


def test_resume_keeps_the_choice_of_a_branch_that_chose_after_a_cancel(app, tag):
    flow = slow_route.bind(tag=tag, which="left") >> (left.bind(tag=tag) | right.bind(tag=tag))
    run = flow.apply_async()
    wait_for(lambda: "start:slow_route" in read_trace(tag), timeout=20, what="the branch")
    assert run.cancel()
    wait_for(lambda: "slow_route" in run.results(), timeout=20, what="its choice")
    run.resume()
    assert run.get(timeout=20) == {"left": "left", "right": None}
    trace = read_trace(tag)
    assert "start:right" not in trace and trace.count("start:slow_route") == 1


def test_resume_passes_on_a_skip_the_run_ended_before_passing_on(app, tag):
    """The run is cancelled after route chose left (right is to be skipped) but before the
    skip was passed on: resume passes it on, and never sends right's successor."""
    flow = route.bind(tag=tag) >> (
        left.bind(tag=tag) | right.bind(tag=tag) >> right_more.bind(tag=tag)
    )
    run_id, spec = _create(app, flow)
    state = state_for(app)
    arrival = state.scripts.complete(
        spec, run_id, spec.nodes["route"], '"routed:left"', branch="!left"
    )
    assert (arrival.publish, arrival.skipped) == (["left"], ["right"])
    run = GraphRun(run_id, app=app)
    assert run.cancel()  # ...before left was published and the skip passed on
    run.resume()
    assert run.get(timeout=20) == {"left": "left", "right_more": None}
    assert "start:right_more" not in read_trace(tag) and "start:right" not in read_trace(tag)


def test_a_node_running_past_its_lease_after_a_cancel_is_not_run_twice(app, tag, fast_reconciler):
    """The node keeps renewing its lease after the cancel, so a resume made after the
    first lease would have run out still leaves it to finish."""
    flow = slow.bind(tag=tag, delay=4.0) >> step.bind(name="after", tag=tag)
    run = flow.apply_async()
    wait_for(lambda: "start:slow" in read_trace(tag), timeout=20, what="slow to start")
    assert run.cancel()
    time.sleep(2.5)  # past the running lease (1.5 s) the node took when it started
    run.resume()
    assert run.get(timeout=20) == "after"
    assert read_trace(tag).count("start:slow") == 1


def test_a_node_that_ends_between_the_resume_reading_and_reopening_is_sent(app, tag, monkeypatch):
    """a was running when resume read the run (so it was left to finish), and ended into
    the still-closed run before resume reopened it (its arrival at the join not made):
    resume sends it too, and its copy makes the arrival."""
    flow = Parallel((step.bind(id="a", name="a", tag=tag), step.bind(id="b", name="b", tag=tag)))
    run_id, spec = _create(app, flow >> step.bind(id="join", name="join", tag=tag))
    state = state_for(app)
    for node_id in ("a", "b"):
        state.scripts.begin(run_id, node_id, "test", [])
    error = error_record("b", "ValueError", "builtins", "b failed")
    assert end_run(app, state, run_id, "failed", node_id="b", error=error)
    reopen = state.scripts.resume

    def a_ends_first(run, fields, watch=None):
        state.scripts.complete(spec, run_id, spec.nodes["a"], '"a"')  # into the failed run
        return reopen(run, fields, watch)

    monkeypatch.setattr(state.scripts, "resume", a_ends_first)
    run = GraphRun(run_id, app=app)
    run.resume()
    assert run.get(timeout=20) == "join"
    assert read_trace(tag).count("start:a") == 0  # its copy found its result


def broker_away(redis_url: str):
    """An app on the session's graph state whose broker nobody listens on: one try per
    publish (kombu 5.3 opens a producer's channel with the connection's own retry), and
    the 1 s queued lease a resume through it gives the nodes it could not send."""
    dead = make_app(redis_url, f"redis://127.0.0.1:{free_port()}/0", "cgtest_dead", SESSION)
    dead.conf.broker_connection_timeout = 1
    dead.conf.task_publish_retry_policy = {"max_retries": 0}
    dead.conf.broker_transport_options = {"max_retries": 0}
    dead.conf.graph_queued_lease = 1
    return dead


def test_a_resume_whose_publish_fails_is_finished_by_the_reconciler(
    app, tag, redis_url, fast_reconciler
):
    flow = step.bind(name="first", tag=tag) >> fails_then_ok.bind(tag=tag, fail_times=1)
    run = flow.apply_async()
    with pytest.raises(RunFailed):
        run.get(timeout=20)
    dead = broker_away(redis_url)
    dead.conf.task_publish_retry_policy = {
        "max_retries": 1,
        "interval_start": 0,
        "interval_step": 0.1,
        "interval_max": 0.2,
    }
    # kombu 5.3 opens a producer's channel before the publish retry policy applies, with
    # the connection's own retry (a second try 2 s later): by then the reconciler had sent
    # the node and the run had succeeded. One try, as on kombu 5.7 (broker_away).
    try:
        with pytest.raises(BrokerUnavailable):
            GraphRun(run.id, app=dead).resume()
    finally:
        app.set_current()
    assert run.status().state == "running"
    assert run.get(timeout=30) == 2  # the reconciler sent what the resume could not


def test_a_sweep_between_listing_and_reopening_a_resumed_run_does_not_drop_it(
    app, tag, redis_url, fast_reconciler, monkeypatch
):
    """resume() lists the run for the reconciler, then reopens it. A sweep in between saw
    the run still failed and took it off the list for good: the reopened run was never
    looked at again, and a node whose publish failed was never sent (it timed out in CI)."""
    from celery_graph.engine.reconcile import Reconciler
    from celery_graph.state.scripts import Scripts

    flow = step.bind(name="first", tag=tag) >> fails_then_ok.bind(tag=tag, fail_times=1)
    run = flow.apply_async()
    with pytest.raises(RunFailed):
        run.get(timeout=20)
    real_resume = Scripts.resume

    def swept_first(self, *args, **kwargs):
        Reconciler(app).sweep()  # the run is still failed: this sweep unlists it
        return real_resume(self, *args, **kwargs)

    monkeypatch.setattr(Scripts, "resume", swept_first)
    dead = broker_away(redis_url)
    try:
        with pytest.raises(BrokerUnavailable):
            GraphRun(run.id, app=dead).resume()
    finally:
        app.set_current()
    assert run.get(timeout=30) == 2  # the reconciler sent what the resume could not


def test_a_sweep_that_saw_the_run_ended_does_not_unlist_it_once_resumed(
    app, tag, redis_url, fast_reconciler, monkeypatch
):
    """A sweep reads a failed run as ended, and before it takes the run off the list, a
    resume reopens and lists it: the sweep's late removal left the reopened run listed
    nowhere, and a node whose publish failed was never sent (CI timed out on
    test_a_resume_whose_publish_fails_is_finished_by_the_reconciler so). A run reopened
    (or admitted) meanwhile stays listed."""
    from celery_graph.engine.reconcile import Reconciler
    from celery_graph.state.replies import Verdict

    flow = step.bind(name="first", tag=tag) >> fails_then_ok.bind(tag=tag, fail_times=1)
    run = flow.apply_async()
    with pytest.raises(RunFailed):
        run.get(timeout=20)
    dead = broker_away(redis_url)
    real_reclaim = Scripts.reclaim
    resumed = threading.Event()
    failures: list[BaseException] = []

    def resumed_after_the_verdict(self, run_id, *args, **kwargs):
        r = real_reclaim(self, run_id, *args, **kwargs)
        if run_id == run.id and r.verdict == Verdict.ENDED and not resumed.is_set():
            try:  # the resume whose publish fails, between the verdict and the removal
                GraphRun(run.id, app=dead).resume()
            except BrokerUnavailable:
                pass
            except BaseException as exc:  # reported below
                failures.append(exc)
            finally:
                app.set_current()
                resumed.set()
        return r

    monkeypatch.setattr(Scripts, "reclaim", resumed_after_the_verdict)
    reconciler = Reconciler(app)

    def swept() -> bool:
        # listed, as a resume's first listing does; again if a sweep elsewhere (a worker
        # process of another test on this prefix) took it off before one here saw it
        state_for(app).runs.track(run.id)
        reconciler.sweep()
        return resumed.is_set()

    # 40 s: the sweep lock may be held meanwhile (up to 30 s by a sweeper that died)
    wait_for(swept, timeout=40, what="a sweep of this process that saw the failed run")
    assert not failures, failures
    # the sweep that saw it ended goes on to its removal; the run must stay listed
    wait_for(lambda: state_for(app).runs.record(run.id).get("status") == "running", 5)
    assert run.get(timeout=30) == 2  # the reconciler sent what the resume could not


# -- submission ------------------------------------------------------------------------


def test_a_retry_during_backpressure_gets_the_same_run(app, tag, monkeypatch):
    """Two submissions with one idempotency key both wait for queue room; then both get
    the one run, which exists (nothing is written while they wait)."""
    from celery_graph.client import submit as submit_module

    waiting = threading.Semaphore(0)
    real_wait = submit_module.wait_for_room

    def observed(*args, **kwargs):
        waiting.release()  # this submission is inside the wait now
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(submit_module, "wait_for_room", observed)
    flow = unconsumed.bind(id="late_unconsumed").as_graph()
    runs: list[GraphRun] = []
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            runs.append(flow.apply_async(idempotency_key=f"backpressure-{tag}"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(2)]
    purge_queue(app, UNCONSUMED_QUEUE)  # what an earlier test's run left there
    try:
        app.conf.graph_max_queue_depth = 1
        app.conf.graph_backpressure_timeout = 20
        blocker = unconsumed.as_graph().apply_async()  # the queue holds one message: full
        for t in threads:
            t.start()
        for _ in threads:
            assert waiting.acquire(timeout=10)
        blocker.cancel()
        purge_queue(app, UNCONSUMED_QUEUE)  # room: both go on
        for t in threads:
            t.join(30)
        assert errors == []
        assert len(runs) == 2 and runs[0].id == runs[1].id
        assert runs[0].status().state == "running"  # it exists: no RunNotFound
    finally:
        app.conf.graph_max_queue_depth = None
        app.conf.graph_backpressure_timeout = None
        for run in runs[:1]:
            run.cancel()
        purge_queue(app, UNCONSUMED_QUEUE)


def test_an_interrupt_during_the_root_publish_still_runs_the_graph(app, tag, fast_reconciler):
    flow = step.bind(name="root", tag=tag) >> step.bind(id="next", name="next", tag=tag)
    graph_id = flow.compile().graph_id

    def interrupt(sender=None, body=None, **kw):
        fields = (body[1] if isinstance(body, (list, tuple)) else {}).get("_graph") or {}
        if fields.get("g") == graph_id and fields.get("n") == "step":
            raise KeyboardInterrupt

    before_task_publish.connect(interrupt, weak=False)
    try:
        with pytest.raises(KeyboardInterrupt):
            flow.apply_async(idempotency_key=f"interrupted-{tag}")
    finally:
        before_task_publish.disconnect(interrupt)
    run = flow.apply_async(idempotency_key=f"interrupted-{tag}")  # the same run
    assert run.get(timeout=30) == "next"
    assert read_trace(tag).count("start:root") == 1


def test_an_idempotency_key_lives_exactly_as_long_as_its_run(app, tag, rclient):
    app.conf.graph_result_ttl = 1
    try:
        first = step.as_graph().apply_async(idempotency_key=f"expiring-{tag}", tag=tag)
        assert first.get(timeout=20) == "step"
        assert step.as_graph().apply_async(idempotency_key=f"expiring-{tag}").id == first.id
        wait_for(
            lambda: not rclient.exists(state_for(app).keys.run(first.id)),
            timeout=10,
            what="the finished run to expire",
        )
        assert not [k for k in rclient.scan_iter(match=f"{app.conf.graph_key_prefix}:idem*")]
        second = step.as_graph().apply_async(idempotency_key=f"expiring-{tag}", tag=tag)
        assert second.get(timeout=20) == "step"  # a new run under the same id
        assert read_trace(tag).count("start:step") == 2
    finally:
        app.conf.graph_result_ttl = None


# -- state that must not outlive its run ------------------------------------------------


def test_shared_state_written_after_a_cancel_never_outlives_the_run(app, tag, rclient):
    app.conf.graph_result_ttl = 2
    try:
        run = write_after_signal.as_graph().apply_async(tag=tag)
        wait_for(
            lambda: "start:write_after_signal" in read_trace(tag),
            timeout=20,
            what="the node to start",
        )
        state_key = state_for(app).keys.state(run.id)
        run_key = state_for(app).keys.run(run.id)
        assert run.cancel()
        wait_for(lambda: not rclient.exists(run_key), timeout=10, what="the run to expire")
        with postruns() as done:
            trace_client().rpush(f"cgtest-go:{tag}", 1)
            assert done.wait(task_id_for(run.id, "write_after_signal"))
        assert not rclient.exists(state_key), "the write re-created the run's state"
    finally:
        app.conf.graph_result_ttl = None


def test_shared_state_written_after_a_cancel_keeps_the_run_expiry(app, tag, rclient):
    app.conf.graph_result_ttl = 30
    try:
        run = write_after_signal.as_graph().apply_async(tag=tag)
        wait_for(
            lambda: "start:write_after_signal" in read_trace(tag),
            timeout=20,
            what="the node to start",
        )
        assert run.cancel()
        with postruns() as done:
            trace_client().rpush(f"cgtest-go:{tag}", 1)
            assert done.wait(task_id_for(run.id, "write_after_signal"))
        keys = state_for(app).keys
        assert run.context().get("late") is True
        assert 0 < rclient.pttl(keys.state(run.id)) <= rclient.pttl(keys.run(run.id)) + 50
        assert rclient.ttl(keys.state(run.id)) <= 30
    finally:
        app.conf.graph_result_ttl = None


def test_a_graph_used_from_the_cache_keeps_its_stored_copy_alive(app, rclient):
    state = state_for(app)
    spec = step.bind(id="cached_ttl", name=uuid.uuid4().hex).compile()
    store = GraphStore(state.client, state.keys, ttl=24, cache_size=4)  # refresh every 1 s
    store.put(spec)
    key = state.keys.graph(spec.graph_id)
    rclient.expire(key, 3)
    # more than the cache's refresh interval (1 s) passes as the stored copy ages
    wait_for(lambda: rclient.pttl(key) <= 1800, timeout=5, what="the stored copy to age")
    store.load(spec.graph_id)  # served from the cache
    assert rclient.ttl(key) > 20


# -- a stalled run says why ------------------------------------------------------------


def test_status_says_why_a_node_waits(app, tag):
    run = unconsumed.as_graph().apply_async()
    try:
        status = run.status()
        why = status.stalled()
        assert set(why) == {"unconsumed"}
        assert why["unconsumed"].startswith("queued ")
        assert "reconciler checks in" in why["unconsumed"]
    finally:
        run.cancel()
        purge_queue(app, UNCONSUMED_QUEUE)


def test_a_run_that_is_gone_cannot_be_written_to(app):
    from celery_graph import RunContext

    with pytest.raises(RunNotFound, match="gone"):
        RunContext(state_for(app), uuid.uuid4().hex, "x").set("k", 1)


def test_a_lease_that_recreates_a_leases_key_gives_it_the_runs_expiry(app, rclient):
    """The last queued node started (Redis dropped the empty queued-leases set), then it
    asked for a retry: the set made again must expire with the run, not live for ever."""
    run_id, _spec = _create(app, step.bind(id="a", name="a"))
    state = state_for(app)
    begun = state.scripts.begin(run_id, "a", "test", [])
    assert begun.status == "running" and not rclient.exists(state.keys.queued(run_id))
    assert state.scripts.lease(run_id, "requeue", 5, ["a"], attempt=begun.attempt) == 1
    assert 0 < rclient.ttl(state.keys.queued(run_id)) <= rclient.ttl(state.keys.run(run_id))


def test_a_failing_copy_of_a_chunk_that_arrived_changes_nothing(app, tag):
    """Chunk 0 of a map arrived with its items' results; a copy of its message that fails
    (a second delivery whose call raised) must not fail the run."""
    flow = split >> process.map("split", chunk=2) >> merge
    run_id, spec = _create(app, flow)
    state = state_for(app)
    source = json.dumps([f"item{i}" for i in range(4)])
    state.scripts.complete(spec, run_id, spec.nodes["split"], source)
    node = spec.nodes["process"]
    state.scripts.begin(run_id, "process", "test", node.upstream_ids(), expands=True)
    assert state.scripts.expand(run_id, node, 4)
    state.scripts.begin(run_id, "process@0", "test", node.pull_ids())
    state.scripts.store_items(run_id, "process", [(0, '"ITEM0"'), (1, '"ITEM1"')])
    assert state.scripts.map_arrive(run_id, node, 0, 2, "")[1] == 1
    message = NodeMessage(spec.graph_id, run_id, "process", index=0, count=2, chunk=2)
    error = error_record("process", "ValueError", "builtins", "a late copy failed")
    assert not fail_node(app, message, error)
    assert state.runs.record(run_id)["status"] == "running"
