"""End-to-end runs on a real Redis and real Celery workers (Redis and RabbitMQ brokers)."""

from __future__ import annotations

import contextlib
import json
import threading

import pytest

from celery_graph import GraphRun, RunFailed, workflow
from tests.support.helpers import assert_order, most_at_once, postruns, wait_for
from tests.tasks import (
    add,
    after_boom,
    audit,
    boom,
    collect,
    double,
    extract,
    load,
    read_trace,
    source,
    step,
    t1,
    t2,
    t3,
    t4,
    t5,
    t6,
    t7,
    t8,
    transform,
)

EIGHT_EDGES = [
    ("t1", "t2"),
    ("t1", "t3"),
    ("t1", "t4"),
    ("t2", "t5"),
    ("t4", "t6"),
    ("t4", "t7"),
    ("t5", "t8"),
    ("t3", "t8"),
    ("t6", "t8"),
    ("t7", "t8"),
]


def test_quickstart_etl(any_app):
    run = (extract >> (transform | audit) >> load).apply_async()
    assert run.get(timeout=20) == {"rows": [10, 20, 30], "count": 3}
    assert run.status().state == "succeeded"
    assert run.results() == {
        "extract": [1, 2, 3],
        "transform": [10, 20, 30],
        "audit": 3,
        "load": {"rows": [10, 20, 30], "count": 3},
    }


def test_sequence_runs_in_order(any_app, tag):
    a, b, c = (step.bind(id=n, name=n) for n in "abc")
    run = (a >> b >> c).apply_async(tag=tag)
    assert run.get(timeout=20) == "c"
    trace = read_trace(tag)
    assert trace == ["start:a", "end:a", "start:b", "end:b", "start:c", "end:c"]


def test_parallel_members_all_run_and_results_by_sink(any_app, tag):
    nodes = [step.bind(id=f"p{i}", name=f"p{i}") for i in range(4)]
    run = (nodes[0] | nodes[1] | nodes[2] | nodes[3]).apply_async(tag=tag)
    assert run.get(timeout=20) == {f"p{i}": f"p{i}" for i in range(4)}
    assert sorted(e for e in read_trace(tag) if e.startswith("end:")) == [
        f"end:p{i}" for i in range(4)
    ]


def test_parallel_members_overlap_in_time(any_app, tag):
    # four 0.3 s members on four worker threads: run one after another, no two would ever
    # be running at once. (Not all four need to: the session's worker may still be busy
    # with an earlier test's nodes on some threads; in the 3.10 run of one CI, members
    # started 0.3 s apart: ['start:q0', 'end:q0', 'start:q3', 'start:q2', ...].)
    nodes = [step.bind(id=f"q{i}", name=f"q{i}", delay=0.3) for i in range(4)]
    run = (nodes[0] | nodes[1] | nodes[2] | nodes[3]).apply_async(tag=tag)
    run.get(timeout=20)
    trace = read_trace(tag)
    assert most_at_once(trace) >= 2, trace


def test_nested_groups_keep_every_ordering(any_app, tag):
    s = {n: step.bind(id=n, name=n) for n in ["a", "b", "c", "d", "e", "f", "g", "h"]}
    flow = s["a"] >> ((s["b"] >> (s["c"] | (s["d"] >> s["e"]))) | s["f"]) >> s["g"] >> s["h"]
    run = flow.apply_async(tag=tag)
    assert run.get(timeout=20) == "h"
    trace = read_trace(tag)
    for before, after in [
        ("a", "b"),
        ("a", "f"),
        ("b", "c"),
        ("b", "d"),
        ("d", "e"),
        ("c", "g"),
        ("e", "g"),
        ("f", "g"),
        ("g", "h"),
    ]:
        assert_order(trace, before, after)
    assert trace.count("start:g") == 1


def test_diamond_written_with_rshift_only_runs_join_once(any_app, tag):
    with workflow("diamond") as wf:
        t1 >> t2
        t1 >> t3
        t2 >> t4
        t3 >> t4
    run = wf.apply_async(tag=tag)
    assert run.get(timeout=20) == "t4"
    trace = read_trace(tag)
    assert trace.count("start:t4") == 1
    assert trace.count("start:t1") == 1
    for before, after in [("t1", "t2"), ("t1", "t3"), ("t2", "t4"), ("t3", "t4")]:
        assert_order(trace, before, after)


def test_eight_task_shape_keeps_order_and_runs_t8_once(any_app, tag):
    flow = t1 >> ((t2 >> t5) | t3 | (t4 >> (t6 | t7))) >> t8
    assert sorted(tuple(e) for e in flow.compile().blob and _edges(flow)) == sorted(EIGHT_EDGES)
    run = flow.apply_async(tag=tag)
    assert run.get(timeout=20) == "t8"
    trace = read_trace(tag)
    for before, after in EIGHT_EDGES:
        assert_order(trace, before, after)
    for i in range(1, 9):
        assert trace.count(f"start:t{i}") == 1, trace


def _edges(flow):
    spec = flow.compile()
    return [(p, n.id) for n in spec.nodes.values() for p in n.preds]


def test_concurrent_runs_of_one_graph_do_not_mix(any_app):
    flow = add >> double
    runs = {x: flow.apply_async(x=x, y=100) for x in range(12)}
    assert len({r.id for r in runs.values()}) == 12
    for x, run in runs.items():
        assert run.get(timeout=30) == (x + 100) * 2
        assert run.results()["add"] == x + 100


def test_bind_gives_ids_and_kwargs(any_app):
    a1 = add.bind(id="a1", x=1, y=2)
    a2 = add.bind(id="a2", x=10)
    run = (a1 | a2).apply_async(y=5)
    # bound y=2 beats the run input y=5 for a1; a2 takes y from the run input
    assert run.get(timeout=20) == {"a1": 3, "a2": 15}


def test_inputs_precedence_upstream_beats_bound_beats_input_beats_default(any_app):
    flow = source.bind(value=7) >> add.bind(id="add", y=1) >> double
    # add.x comes from the run input, add.y is bound; double.add is the upstream result
    run = flow.apply_async(x=3, y=99, value=5)
    assert run.get(timeout=20) == 8
    assert run.results()["source"] == 7  # bound 7 beats run input 5
    run2 = (source >> collect.bind(id="c", batch=["bound"])).apply_async()
    assert run2.get(timeout=20) == ["bound"]


def test_named_group_hands_member_results_in_member_order(any_app):
    members = [source.bind(id=f"s{i}", value=i) for i in (3, 1, 2)]
    batch = (members[0] | members[1] | members[2]).named("batch")
    run = (batch >> collect).apply_async()
    assert run.get(timeout=20) == [3, 1, 2]


def test_named_group_with_sequence_and_nested_members(any_app):
    # a sequence member contributes its last step; a nested named group stays a list;
    # an unnamed nested group flattens, since a | (b | c) is a | b | c
    inner = (source.bind(id="i1", value=1) | source.bind(id="i2", value=2)).named("inner")
    chained = source.bind(id="c0", value=5) >> add.bind(id="c1", x=0)
    flat = source.bind(id="f1", value=7) | source.bind(id="f2", value=8)
    batch = (chained | inner | flat | source.bind(id="last", value=9)).named("batch")
    run = (batch >> collect).apply_async(y=1)
    assert run.get(timeout=20) == [1, [1, 2], 7, 8, 9]


def test_failing_node_fails_run_and_stops_downstream(any_app, tag):
    flow = step.bind(id="first", name="first") >> boom >> after_boom
    run = flow.apply_async(tag=tag)
    with pytest.raises(RunFailed) as info:
        run.get(timeout=20)
    err = info.value
    assert err.node_id == "boom"
    assert err.exc_type == "ValueError"
    assert err.exc_message == "boom went the node"
    assert "ValueError: boom went the node" in err.traceback
    assert "boom" in str(err) and run.id in str(err)
    status = run.status()
    assert status.state == "failed"
    assert status.nodes["boom"].state == "failed"
    assert status.nodes["after_boom"].state == "upstream_failed"
    assert "start:after_boom" not in read_trace(tag)


def test_failing_group_member_fails_run_and_join_never_runs(any_app, tag):
    ok = [step.bind(id=f"ok{i}", name=f"ok{i}") for i in range(3)]
    flow = (ok[0] | boom | ok[1]) >> after_boom >> ok[2]
    run = flow.apply_async(tag=tag)
    with pytest.raises(RunFailed) as info:
        run.get(timeout=20)
    assert info.value.node_id == "boom"
    trace = read_trace(tag)
    assert "start:after_boom" not in trace and "start:ok2" not in trace
    assert run.status().state == "failed"


def test_multiple_sinks_return_a_dict(any_app):
    flow = extract >> (transform | audit)
    run = flow.apply_async(n=2)
    assert run.get(timeout=20) == {"transform": [10, 20], "audit": 2}


def test_run_reopened_by_id(any_app):
    run = (extract >> audit).apply_async()
    again = GraphRun(run.id, app=any_app)
    assert again.get(timeout=20) == 3
    assert again.status().state == "succeeded"
    assert again.status().nodes["audit"].worker  # the worker hostname is recorded


def test_a_waiter_reads_the_record_and_the_sinks_results_in_one_round_trip(app, monkeypatch):
    """get() on a handle that knows its graph reads the run record and the sinks' results
    together (state/runs.py record_with_results, a pipeline): the client's separate
    HGETALL and HMGET are never called, whatever the outcome, one sink or several."""
    from celery_graph.state import state_for
    from tests.tasks import audit, boom, extract, transform

    with postruns() as done:
        one = (extract >> transform).apply_async()
        several = (extract >> (transform | audit)).apply_async()
        failing = boom.bind(id="broken").as_graph().apply_async()
        client = state_for(app).runs.client

        def refused(*args, **kwargs):
            raise AssertionError("read on its own, not with the record")

        for run in (one, several, failing):  # let them end first
            with pytest.raises(Exception) if run is failing else contextlib.nullcontext():
                run.get(timeout=30)
        # and the in-process worker be done with them (it reads with the same client)
        ends = (one.id, "transform"), (several.id, "transform"), (several.id, "audit")
        for task_id in [f"{r}:{n}" for r, n in ends] + [f"{failing.id}:broken"]:
            assert done.wait(task_id), task_id
    monkeypatch.setattr(client, "hgetall", refused)
    monkeypatch.setattr(client, "hmget", refused)
    assert GraphRun(one.id, app=app, spec=one.spec()).get(timeout=5) == [10, 20, 30]
    assert one.get(timeout=5) == [10, 20, 30]
    assert several.get(timeout=5) == {"transform": [10, 20, 30], "audit": 3}
    with pytest.raises(RunFailed, match="broken"):
        failing.get(timeout=5)


def test_a_submission_makes_one_round_trip_to_redis_before_its_first_message(app, monkeypatch):
    """The graph stored, the run listed for the reconciler, created by start.lua and
    listed again go in one pipeline (state/runs.py create: a client of one server); the
    run is listed among the runs (``runs``, the dashboard) after its roots are out."""
    import redis.connection

    from celery_graph.client import submit as submitting
    from celery_graph.state import state_for
    from tests.tasks import extract, transform

    flow = extract >> transform
    assert flow.apply_async().get(timeout=30) == [10, 20, 30]  # connections made
    me = threading.get_ident()
    sends: list[object] = []
    send = redis.connection.Connection.send_packed_command

    def counted(self, command, *args, **kwargs):
        if threading.get_ident() == me:
            sends.append(command)
        return send(self, command, *args, **kwargs)

    before_publish: list[int] = []
    publish = submitting.publish_nodes

    def publishing(*args, **kwargs):
        before_publish.append(len(sends))
        return publish(*args, **kwargs)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counted)
    monkeypatch.setattr(submitting, "publish_nodes", publishing)
    run = flow.apply_async()
    monkeypatch.undo()
    assert before_publish == [1]
    assert run.get(timeout=30) == [10, 20, 30]
    state = state_for(app)
    listed = state.client.zscore(state.keys.runs_index(), run.id)
    assert listed == float(state.runs.record(run.id)["created"])


def test_get_on_a_run_just_submitted_waits_for_its_signal_before_reading(app, monkeypatch):
    """A handle from the submission that created the run (no deadline) waits for the
    run's completion signal first, where it read the record before waiting too; the
    signal of a run that succeeded with small results carries them, so it reads nothing
    at all. A handle whose run has ended, or a run with a deadline, reads first."""
    from celery_graph.state import state_for
    from tests.tasks import extract, transform

    runs = state_for(app).runs
    reads: list[str] = []
    read = runs.record_with_results
    me = threading.get_ident()  # the in-process worker reads the record too, to end the run

    def counted(run_id, *args):
        if threading.get_ident() == me:
            reads.append(run_id)
        return read(run_id, *args)

    monkeypatch.setattr(runs, "record_with_results", counted)
    run = (extract >> transform).apply_async()
    assert run.get(timeout=30) == [10, 20, 30]
    assert reads == []  # the signal carried the result
    assert run.get(timeout=5) == [10, 20, 30]  # once only: it has ended now
    assert reads == [run.id]
    reads.clear()
    timed = (extract >> transform).apply_async(deadline=60)
    assert timed.get(timeout=30) == [10, 20, 30]
    assert len(reads) >= 1 and set(reads) == {timed.id}


def test_the_completion_signal_carries_a_run_s_small_results(app, monkeypatch):
    """A run that succeeds with at most 64 sinks and 1 KiB of their results has them in
    its completion signal (lib/run.lua done_signal): a waiter it wakes returns them
    without reading the record; larger ones, more sinks or a failure are read as before,
    with the same answers."""
    from celery_graph import Parallel
    from celery_graph.state import state_for
    from tests.tasks import big_result, boom, source

    state = state_for(app)
    runs = state.runs
    reads: list[str] = []
    read = runs.record_with_results
    me = threading.get_ident()

    def counted(run_id, *args):
        if threading.get_ident() == me:
            reads.append(run_id)
        return read(run_id, *args)

    def signal_of(run: GraphRun) -> list[bytes]:
        return state.client.lrange(state.keys.done(run.id), 0, -1)

    monkeypatch.setattr(runs, "record_with_results", counted)
    # bytes, not characters (the length Lua counts), and a result that looks like the layout
    odd = "é:-\n2:xy"
    # 1,024 bytes of results in all: the most a signal carries
    fill = 1024 - len("null") - len(json.dumps(odd).encode()) - 2
    small = (
        source.bind(id="a", value=None)
        | source.bind(id="b", value=odd)
        | big_result.bind(size=fill)
    ).apply_async()
    assert small.get(timeout=30) == {"a": None, "b": odd, "big_result": "x" * fill}
    assert reads == []
    assert signal_of(small)[0].startswith(b"succeeded\n")
    over = big_result.bind(size=1023).as_graph().apply_async()  # 1,025 bytes encoded
    assert over.get(timeout=30) == "x" * 1023
    assert reads == [over.id] and signal_of(over) == [b"succeeded"]
    reads.clear()
    wide = Parallel(tuple(source.bind(id=f"s{i}", value=i) for i in range(65))).apply_async()
    assert wide.get(timeout=60) == {f"s{i}": i for i in range(65)}
    assert reads == [wide.id] and signal_of(wide) == [b"succeeded"]
    reads.clear()
    failing = boom.bind(id="broken").as_graph().apply_async()
    with pytest.raises(RunFailed, match="broken"):
        failing.get(timeout=30)
    assert reads == [failing.id] and signal_of(failing) == [b"failed"]


def test_a_completion_signal_that_is_not_the_layout_carries_nothing():
    """Signals of other writers (a plain status, an older worker's) or a cut one give no
    outcome: the waiter reads the record."""
    from celery_graph.state.runs import signalled

    assert signalled("r", b'succeeded\n["a"]\n4:null').value is None
    assert signalled("r", b'succeeded\n["a","b"]\n-1:7').value == {"a": None, "b": 7}
    for signal in (
        None,
        b"succeeded",
        b"failed",
        b'succeeded\n["a"]\n5:null',  # cut short
        b'succeeded\n["a"]\n2:1',
        b'succeeded\n["a"]\n1:12',  # something after the last
        b'succeeded\n["a"]\n',
        b"succeeded\n[]\n",
        b"succeeded\nnot json\n1:1",
    ):
        assert signalled("r", signal) is None, signal


def test_the_end_of_a_run_reads_its_record_once(app, monkeypatch):
    """The worker that ends a run has the run record from the call that ended it
    (complete.lua answers it) and hands it to the run_finished receivers (the metrics count
    the run from it), the listing under its final state and the concurrency slot: it read
    it three times, and the slot's fields a fourth, then once, now never on its own. The
    run is still listed and counted, with the record as it ended."""
    import redis

    from celery_graph.signals import run_finished
    from celery_graph.state import state_for
    from tests.tasks import extract

    runs = state_for(app).runs
    reads: list[str] = []
    record = runs.record
    monkeypatch.setattr(runs, "record", lambda run_id: reads.append(run_id) or record(run_id))
    received: list[dict] = []

    def receiver(sender=None, run_id=None, record=None, **_):
        record = record or {}
        received.append(
            {"run_id": run_id, "status": record.get("status"), "ended": "finished" in record}
        )

    run_finished.connect(receiver, weak=False, dispatch_uid="test_engine.record_once")
    try:
        run = extract.as_graph().apply_async()
        assert run.get(timeout=30) == [1, 2, 3]
        listed = state_for(app).keys.state_runs("succeeded")
        client = redis.Redis.from_url(state_for(app).settings.redis_url)
        wait_for(lambda: client.zscore(listed, run.id) is not None, 10, "the run listed")
    finally:
        run_finished.disconnect(dispatch_uid="test_engine.record_once")
    assert reads.count(run.id) == 0
    assert {"run_id": run.id, "status": "succeeded", "ended": True} in received
