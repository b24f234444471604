"""Leases and copies, against real Redis and no worker: a copy of a running node runs
nothing and counts nothing; only the attempt holding a node hands it over; a message
ahead of the state runs nothing; a lost worker is counted only for a running lease that
ran out, never during the reconciler's hold after an outage; a worker handing a node
back releases its lease; a queued node a live worker holds is not sent again; a late
copy of a node that arrived already leaves no mark for a resume."""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace

import pytest
from celery import Celery

from celery_graph.engine.reconcile import Reconciler, outage_after
from celery_graph.errors import NodeLost
from celery_graph.model import NodeRecord
from celery_graph.protocol import NodeMessage
from celery_graph.state import Begin, Ended, Expiry, Mode, State, state_for
from celery_graph.worker.step import node_messages
from tests.tasks import process, split, step

LEASE = 4.0  # running and queued lease of these tests (seconds)


@pytest.fixture()
def app(redis_url: str, tag: str) -> Celery:
    """An app with a key prefix and a queue of its own, and no worker."""
    app = Celery(f"leases-{tag}", broker=redis_url, set_as_current=False)
    app.conf.update(
        graph_redis_url=redis_url,
        graph_key_prefix=f"cgtest-leases-{tag}",
        task_default_queue=f"cgtest-leases-{tag}",
        graph_result_ttl=60,
        graph_running_lease=LEASE,
        graph_queued_lease=LEASE,
        graph_reconcile_interval=0.5,
    )
    yield app
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(app.conf.task_default_queue)


@pytest.fixture()
def state(app: Celery) -> State:
    return state_for(app)


def _run(state: State, flow) -> tuple[str, object]:
    spec = flow.compile()
    run_id = uuid.uuid4().hex
    state.runs.create(run_id, spec, "{}")
    return run_id, spec


def _field(state: State, run_id: str, name: str) -> str | None:
    raw = state.client.hget(state.keys.nodes(run_id), name)
    return raw.decode() if raw is not None else None


def _expire_lease(state: State, run_id: str, field: str, key: str = "leases") -> None:
    """The lease of ``field`` ran out a second ago (server time)."""
    zset = getattr(state.keys, key)(run_id)
    state.client.zadd(zset, {field: state.runs.time() - 1})


def test_a_copy_of_a_running_node_runs_nothing_and_counts_nothing(state):
    run_id, _spec = _run(state, step.bind(id="a") >> step.bind(id="b"))
    s = state.scripts
    first = s.begin(run_id, "a", "w1@host", [])
    assert (first.status, first.attempt) == (Begin.RUNNING, 1)
    copy = s.begin(run_id, "a", "w2@host", [])
    assert (copy.status, copy.worker, copy.attempt) == (Begin.BUSY, "w1@host", 1)
    assert copy.lease is not None and copy.lease > state.runs.time()
    # the holder's lease ran out: still not the copy's to decide (the reconciler counts
    # the lost worker and sends the node again)
    _expire_lease(state, run_id, "a")
    assert s.begin(run_id, "a", "w2@host", []).status == Begin.BUSY
    record = NodeRecord.parse(_field(state, run_id, "a:run"))
    assert (record.attempts, record.worker) == (1, "w1@host")
    assert _field(state, run_id, "a:lost") is None


def test_only_the_attempt_holding_a_node_hands_it_over(state):
    run_id, _spec = _run(state, step.bind(id="a"))
    s = state.scripts
    assert s.begin(run_id, "a", "w1@host", []).attempt == 1
    assert s.begin(run_id, "a", "w2@host", [], handover=2).status == Begin.BUSY
    retry = s.begin(run_id, "a", "w2@host", [], handover=1)  # sent by attempt 1
    assert (retry.status, retry.attempt) == (Begin.RUNNING, 2)
    # a copy of that retry, sent by attempt 1 too, finds attempt 2 holding the node
    assert s.begin(run_id, "a", "w3@host", [], handover=1).status == Begin.BUSY


def test_a_message_ahead_of_the_state_runs_nothing(state):
    s = state.scripts
    run_id, _spec = _run(state, step.bind(id="a") >> step.bind(id="b"))
    assert s.begin(run_id, "a", "w1@host", []).status == Begin.RUNNING
    # b's release was lost (or never happened): its message runs nothing, records nothing
    early = s.begin(run_id, "b", "w1@host", ["a"])
    assert (early.status, early.behind) == (Begin.UNRELEASED, "")
    assert _field(state, run_id, "b:run") is None
    # released, but its upstream node is still running without a result
    # (as complete.lua releases it: the state and its count)
    state.client.hset(state.keys.nodes(run_id), mapping={"b:state": "queued", "#queued": 1})
    early = s.begin(run_id, "b", "w1@host", ["a"])
    assert (early.status, early.behind) == (Begin.UNRELEASED, "a")
    assert _field(state, run_id, "b:state") == "queued"
    # an item of a map whose map node has not expanded
    map_run, spec = _run(state, split >> process.map("split"))
    assert s.begin(map_run, "process#0", "w1@host", []).status == Begin.UNRELEASED
    s.begin(map_run, "split", "w1@host", [])
    s.complete(spec, map_run, spec.nodes["split"], '["x"]')
    s.begin(map_run, "process", "w1@host", ["split"], expands=True)
    assert s.expand(map_run, spec.nodes["process"], 1)
    assert s.begin(map_run, "process#0", "w1@host", []).status == Begin.RUNNING


def test_a_lost_worker_counts_only_for_a_running_lease_that_ran_out_outside_a_hold(state):
    s = state.scripts
    run_id, _spec = _run(state, step.bind(id="a"))
    s.begin(run_id, "a", "w1@host", [])
    _expire_lease(state, run_id, "a")
    hold = state.runs.time() + 30
    held = s.reclaim(run_id, hold=hold)
    assert (held.held, held.expired) == (1, ())
    assert state.client.zscore(state.keys.leases(run_id), "a") == pytest.approx(hold, abs=0.01)
    assert _field(state, run_id, "a:lost") is None
    _expire_lease(state, run_id, "a")
    lost = s.reclaim(run_id)
    assert [(f, kind) for f, kind, _ in lost.expired] == [("a", Expiry.LOST)]
    assert _field(state, run_id, "a:lost") == "1"


def test_a_worker_handing_a_node_back_releases_only_its_own_attempt(state):
    s = state.scripts
    run_id, _spec = _run(state, step.bind(id="a"))
    s.begin(run_id, "a", "w1@host", [])
    assert s.lease(run_id, Mode.RELEASE, LEASE, ["a"], worker="w2@host") == 0
    assert s.lease(run_id, Mode.RELEASE, LEASE, ["a"], worker="w1@host") == 1
    assert _field(state, run_id, "a:state") == "queued"
    assert state.client.zscore(state.keys.leases(run_id), "a") is None
    assert state.client.zscore(state.keys.queued(run_id), "a") is not None
    # the handed-back message runs at once where it lands
    assert s.begin(run_id, "a", "w2@host", []).status == Begin.RUNNING
    assert _field(state, run_id, "a:lost") is None


def test_a_late_copy_of_a_node_that_arrived_leaves_no_mark(state):
    """A copy that finishes after another copy of its node arrived (and the run went on)
    has nothing to settle: no ":unsettled" mark, whether the run succeeded since, or was
    cancelled. A node that finishes after a cancel without having arrived is marked."""
    s = state.scripts
    run_id, spec = _run(state, step.bind(id="a") >> step.bind(id="b"))
    for node in ("a", "b"):
        s.begin(run_id, node, "w1@host", [])
        last = s.complete(spec, run_id, spec.nodes[node], f'"{node}"')
    assert last.ended == Ended.SUCCEEDED
    s.complete(spec, run_id, spec.nodes["a"], '"a"')  # the late copy
    assert _field(state, run_id, "a:unsettled") is None
    run_id, spec = _run(state, step.bind(id="a") >> step.bind(id="b"))
    s.begin(run_id, "a", "w1@host", [])
    s.complete(spec, run_id, spec.nodes["a"], '"a"')
    s.begin(run_id, "b", "w1@host", ["a"])
    s.finish(run_id, "cancelled")
    s.complete(spec, run_id, spec.nodes["a"], '"a"')  # a late copy of a
    s.complete(spec, run_id, spec.nodes["b"], '"b"')  # b ends after the cancel
    assert _field(state, run_id, "a:unsettled") is None
    assert _field(state, run_id, "b:unsettled") == "1"


def test_the_reconciler_holds_running_leases_once_after_an_outage(app, state):
    reconciler = Reconciler(app)
    s = state.scripts
    run_id, _spec = _run(state, step.bind(id="a"))
    s.begin(run_id, "a", "w1@host", [])
    _expire_lease(state, run_id, "a")
    now = state.runs.time()
    state.runs.mark_swept(now - outage_after(state.settings) - 1)  # the last sweep: an outage
    report = reconciler.sweep()
    assert report.hold == pytest.approx(now + LEASE, abs=2)
    assert (report.held, report.redelivered) == (1, [])
    assert _field(state, run_id, "a:lost") is None
    # during the hold: nothing counted, nothing sent
    _expire_lease(state, run_id, "a")
    state.runs.track(run_id)  # due now
    report = reconciler.sweep()
    assert (report.runs, report.held, report.redelivered) == (1, 1, [])
    # the hold ended less than a lease ago and sweeping stopped again: no second hold
    # (a worker whose renewals keep failing is not protected forever)
    state.runs.mark_swept(now - 60, hold=state.runs.time() - 1)
    _expire_lease(state, run_id, "a")
    state.runs.track(run_id)
    report = reconciler.sweep()
    assert (report.hold, report.redelivered) == (None, [f"{run_id}:a"])
    assert _field(state, run_id, "a:lost") == "1"


def test_a_queued_node_a_live_worker_holds_is_not_sent_again(app, state):
    reconciler = Reconciler(app)
    run_id, _spec = _run(state, step.bind(id="a"))  # its message never sent: queue empty
    _expire_lease(state, run_id, "a", key="queued")
    hostname = f"holder-{uuid.uuid4().hex[:6]}@host"
    held = {"held": json.dumps([f"{run_id}:a"])}
    assert state.workers.claim(hostname, "t1", held, ttl=30, live_window=10).claimed
    assert state.workers.held() >= {f"{run_id}:a"}
    report = reconciler.sweep()
    assert (report.extended, report.redelivered) == (1, [])
    state.workers.remove(hostname, "t1")  # the worker is gone: its messages may be too
    state.runs.track(run_id)
    assert reconciler.sweep().redelivered == [f"{run_id}:a"]


def test_a_heartbeat_lists_the_node_messages_a_worker_holds():
    graph = NodeMessage("ab" * 32, "cd" * 16, "n")
    item = graph.item(3, 10)
    requests = [
        SimpleNamespace(kwargs={"_graph": graph.fields(), "x": 1}),
        SimpleNamespace(kwargs={"_graph": item.fields()}),
        SimpleNamespace(kwargs={"plain": True}),  # not a node message
        SimpleNamespace(kwargs={"_graph": {"r": "nope"}}),  # malformed: left out
    ]
    assert [m.unit for m in node_messages(requests)] == [f"{'cd' * 16}:n", f"{'cd' * 16}:n#3"]


def test_a_message_names_the_attempt_that_hands_its_node_over():
    message = NodeMessage("ab" * 32, "cd" * 16, "n")
    held = message.held_by(3)
    assert held.fields()["a"] == 3 and NodeMessage.parse(held.fields()) == held
    assert held.again().holder == 3  # sent again without beginning: passes it on
    assert held.again(holder=4).holder == 4  # this delivery began attempt 4
    assert "a" not in message.fields() and held.item(0, 2).holder == 0


def test_node_lost_says_only_leases_that_ran_out_count():
    text = str(NodeLost.after("a", 3, "w1@host"))
    assert "lost its worker 3 times" in text and "running lease ran out" in text
    assert "did not count" in text
