"""Concurrency limits of flows (``flow.with_concurrency``) with real workers: how many
runs go on at once, queued runs and their positions, FIFO per key value, deadlines that
count from submission, and slots freed through the reconciler (docs/concurrency.md)."""

from __future__ import annotations

import json
import re

import pytest

from celery_graph import GraphRun, RunFailed
from celery_graph.engine.reconcile import Reconciler, Sweep
from celery_graph.errors import GraphDefinitionError, MissingParameterError
from celery_graph.state import Slot, state_for
from tests.support.helpers import most_at_once, wait_for
from tests.support.processes import base_env, cli
from tests.tasks import fails_then_ok, occupy, open_gate, read_trace, step, trace_client


def limited(tag: str, limit: int, key: str | None = None, seconds: float = 0.2):
    """A two-node flow whose trace brackets each run: 'start:<tenant>' when its first node
    starts, 'end:<tenant>' when its last one ends."""
    flow = occupy.bind(id="enter", mark="start", seconds=seconds) >> occupy.bind(
        id="leave", mark="end", seconds=seconds
    )
    return flow.with_name(f"limited-{tag}").with_concurrency(limit, key=key)


def sweep(app) -> Sweep:
    """One reconciler sweep of our own (the worker's thread may hold the lock a moment)."""
    reconciler = Reconciler(app)

    def once() -> Sweep | None:
        report = reconciler.sweep()
        return None if report.locked_out else report

    return wait_for(once, timeout=30, what="the reconciler lock")


def test_ten_runs_with_limit_two_never_overlap_more_than_two_and_all_finish(app, tag):
    flow = limited(tag, 2)
    runs = [flow.apply_async(tag=tag) for _ in range(10)]
    states = [r.status().state for r in runs]
    assert states.count("queued") >= 7, states  # at most 2 running, maybe 1 finished
    for run in runs:
        assert run.get(timeout=120) == "-"
    trace = read_trace(tag)
    assert trace.count("start:-") == 10 and trace.count("end:-") == 10, trace
    assert most_at_once(trace) == 2, trace


def test_queued_runs_show_their_position_and_start_in_submission_order(app, tag):
    flow = limited(tag, 1, seconds=1.0)
    first = flow.apply_async(tag=tag, tenant="r0")
    others = [flow.apply_async(tag=tag, tenant=f"r{i}") for i in range(1, 4)]
    statuses = [r.status() for r in others]
    assert [s.state for s in statuses] == ["queued"] * 3
    assert [s.position for s in statuses] == [1, 2, 3]
    assert statuses[0].as_json()["position"] == 1
    assert first.status().position is None
    # a line of runs costs the reconciler nothing: they are listed for it when they start
    watched = set(state_for(app).index.running_ids(100_000))
    assert first.id in watched and not watched & {r.id for r in others}
    for run in [first, *others]:
        run.get(timeout=120)
    starts = [e for e in read_trace(tag) if e.startswith("start:")]
    assert starts == ["start:r0", "start:r1", "start:r2", "start:r3"]
    assert first.status().position is None and others[-1].status().state == "succeeded"


def test_two_keys_with_five_runs_each_interleave(app, tag):
    flow = limited(tag, 1, key="tenant", seconds=0.3)
    runs = [flow.apply_async(tag=tag, tenant="a") for _ in range(5)]
    runs += [flow.apply_async(tag=tag, tenant="b") for _ in range(5)]
    # b's first run does not wait behind a's backlog: one of each runs at once
    assert [r.status().state for r in runs].count("queued") >= 7
    assert runs[5].status().state in ("running", "succeeded")
    for run in runs:
        run.get(timeout=120)
    trace = read_trace(tag)
    assert most_at_once(trace, "a") == 1 and most_at_once(trace, "b") == 1, trace
    assert most_at_once(trace) == 2, trace
    starts = [e for e in trace if e.startswith("start:")]
    # interleaved: b started before a's last run did, and a before b's last
    assert starts.index("start:b") < len(starts) - 1 - starts[::-1].index("start:a"), starts
    assert starts.index("start:a") < len(starts) - 1 - starts[::-1].index("start:b"), starts


def test_a_key_missing_from_the_inputs_is_an_error_before_anything_is_sent(app, tag):
    flow = limited(tag, 1, key="tenant")
    with pytest.raises(MissingParameterError, match="per run input 'tenant'"):
        flow.apply_async(tag=tag)
    with pytest.raises(GraphDefinitionError, match="key 'customer' is not a parameter"):
        occupy.as_graph().with_concurrency(1, key="customer")
    with pytest.raises(GraphDefinitionError, match="limit must be a whole number"):
        occupy.as_graph().with_concurrency(0)
    assert read_trace(tag) == []


def test_cancelling_a_queued_run_takes_it_out_and_cancelling_a_holder_frees_its_slot(app, tag):
    flow = limited(tag, 1, seconds=1.0)
    first = flow.apply_async(tag=tag, tenant="r0")
    second = flow.apply_async(tag=tag, tenant="r1")
    third = flow.apply_async(tag=tag, tenant="r2")
    assert second.cancel()
    assert second.status().state == "cancelled"
    assert third.status().position == 1
    assert first.cancel()  # its slot goes to the next run at once
    assert third.get(timeout=60) == "r2"
    assert "start:r1" not in read_trace(tag)


def test_deadline_counts_from_submission_while_queued(app, tag):
    flow = limited(tag, 1, seconds=2.0)
    first = flow.apply_async(tag=tag, tenant="r0")
    late = flow.apply_async(tag=tag, tenant="r1", deadline=1.0)
    assert late.status().state == "queued"
    wait_for(
        lambda: sweep(app) and late.status().state == "failed", timeout=30, what="the deadline"
    )
    with pytest.raises(RunFailed, match="DeadlineExceeded"):
        late.get(timeout=10)
    assert first.get(timeout=60) == "r0"
    assert "start:r1" not in read_trace(tag)


def test_a_run_admitted_after_a_sweep_saw_it_queued_stays_listed(app, tag, monkeypatch):
    """A sweep reads a listed run as queued for a slot (nothing for the reconciler to do
    until it starts), and before it takes the run off the list, the run is admitted and
    listed by the process that freed the slot: the sweep's late removal left the running
    run listed nowhere, so a node of it lost with its worker would never be sent again."""
    from celery_graph.state.replies import Verdict
    from celery_graph.state.scripts import Scripts

    flow = limited(tag, 1, seconds=1.0)
    first = flow.apply_async(tag=tag, tenant="r0")
    second = flow.apply_async(tag=tag, tenant="r1")
    assert second.status().state == "queued"
    state = state_for(app)
    real_reclaim = Scripts.reclaim
    admitted: list[str] = []

    def admitted_after_the_verdict(self, run_id, *args, **kwargs):
        r = real_reclaim(self, run_id, *args, **kwargs)
        if run_id == second.id and r.verdict == Verdict.QUEUED and not admitted:
            admitted.append(run_id)
            assert first.cancel()  # its slot goes to the second run, which is listed
        return r

    monkeypatch.setattr(Scripts, "reclaim", admitted_after_the_verdict)

    def swept() -> bool:
        # listed while queued, as a resume that waits for a slot; again if a sweep
        # elsewhere (a worker process of another test on this prefix) took it off first
        state.runs.track(second.id)
        return bool(sweep(app) and admitted)

    wait_for(swept, timeout=40, what="a sweep of this process that saw the queued run")
    monkeypatch.undo()
    assert second.status().state in ("running", "succeeded")
    assert second.id in state.index.running_ids(100_000) or second.status().state == "succeeded"
    assert second.get(timeout=60) == "r1"


def test_a_slot_whose_run_never_came_is_freed_by_the_reconciler(app, tag):
    """A submitter that died after taking a slot and before creating its run: the slot's
    lease runs out and the reconciler gives it to the next run."""
    state = state_for(app)
    flow = limited(tag, 1)
    spec = flow.compile()
    slot = Slot(f"limited-{tag}", "all", 1)
    ghost = "0" * 31 + "1"
    assert state.limits.enter(slot, ghost, None, lease=0.5) == 0
    run = flow.apply_async(tag=tag)
    assert run.status().state == "queued" and spec.concurrency is not None
    # the ghost's lease runs out (server time, compared in Redis); a sweep, ours or the
    # worker's, frees its slot and starts the run
    wait_for(lambda: sweep(app) and run.status().state != "queued", timeout=30, what="a sweep")
    assert not state.limits.holds(slot.scope, slot.group, ghost)
    assert run.get(timeout=60) == "-"


def test_a_resumed_run_takes_a_slot_again_or_waits_queued_for_one(app, tag):
    """resume() on a run of a limited flow: while the slot is taken it waits in 'queued'
    with its place in line, and its nodes are sent again when the slot frees."""
    gate = f"resume-{tag}"  # the second run holds the slot until the CLI has answered
    flow = (
        fails_then_ok.bind(id="check")
        >> occupy.bind(id="enter", mark="start", seconds=60.0, gate=gate)
        >> occupy.bind(id="leave", mark="end", seconds=0.5)
    ).with_name(f"limited-{tag}")
    flow = flow.with_concurrency(1)
    first = flow.apply_async(tag=tag, tenant="first")
    with pytest.raises(RunFailed):  # its first call of fails_then_ok fails
        first.get(timeout=30)
    second = flow.apply_async(tag=tag, tenant="second")
    wait_for(lambda: "start:second" in read_trace(tag), timeout=30, what="the second run")
    env = base_env(app.conf.graph_redis_url, CELERY_GRAPH_KEY_PREFIX=app.conf.graph_key_prefix)
    done = cli("resume", first.id, env=env)  # the CLI, as run.resume() and the dashboard
    assert done.returncode == 0, done.stderr
    assert f"resumed run {first.id}: queued (#1 in line)" in done.stdout
    status = first.status()
    assert (status.state, status.position) == ("queued", 1)
    open_gate(trace_client(), gate)
    assert first.get(timeout=60) == "first" and second.get(timeout=60) == "second"
    trace = read_trace(tag)
    assert trace.index("start:first") > trace.index("end:second"), trace
    assert most_at_once(trace) == 1, trace
    limits = state_for(app).limits  # the last end frees its slot just after the run ends
    wait_for(lambda: limits.counts(f"limited-{tag}", "all") == (0, 0), timeout=10, what="slots")


def test_a_resumed_run_that_still_holds_its_slot_is_not_counted_twice(app, tag):
    """A run whose end did not free its slot (the process died first; the reconciler
    would free it when the lease runs out) is resumed: it goes on in the slot it holds."""
    state = state_for(app)
    flow = (fails_then_ok.bind(id="check") >> occupy.bind(id="enter", seconds=0.5)).with_name(
        f"limited-{tag}"
    )
    flow = flow.with_concurrency(2)
    run = flow.apply_async(tag=tag, tenant="again")
    with pytest.raises(RunFailed):
        run.get(timeout=30)
    slot = Slot(f"limited-{tag}", "all", 2)
    wait_for(lambda: state.limits.counts(slot.scope, slot.group) == (0, 0), timeout=10, what="ends")
    assert state.limits.enter(slot, run.id, None, lease=30) == 0  # as if never freed
    run.resume()
    assert run.status().state == "running"
    assert state.limits.counts(slot.scope, slot.group) == (1, 0)
    assert run.get(timeout=30) == "again"
    wait_for(lambda: state.limits.counts(slot.scope, slot.group) == (0, 0), timeout=10, what="end")


def test_a_sigkilled_workers_run_keeps_its_slot_until_it_ends_then_the_next_starts(
    short_lease_workers, tag
):
    workers = short_lease_workers
    """The run on a worker killed mid-node is reclaimed and finishes elsewhere; it holds its
    slot all along (never counted twice), and the queued run starts when it ends."""
    workers.start("a")
    workers.start("b")
    flow = (
        step.bind(id="slow", name="slow", delay=2.0) >> step.bind(id="after", name="after")
    ).with_name(f"killed-{tag}")
    flow = flow.with_concurrency(1)
    first = flow.submit({"tag": tag}, app=workers.app)
    second = flow.submit({"tag": f"{tag}-2"}, app=workers.app)
    assert GraphRun(second.id, app=workers.app).status().state == "queued"
    status = wait_for(
        lambda: (s := first.status()).nodes["slow"].state == "running" and s,
        timeout=30,
        what="the slow node to start",
    )
    workers.kill(status.nodes["slow"].worker)
    assert second.status().state == "queued"  # the first run still holds the slot
    first.get(timeout=90)
    second.get(timeout=90)
    assert second.status().nodes["slow"].started >= first.status().finished
    limits = state_for(workers.app).limits  # freed just after the run ended (after_run)
    wait_for(lambda: limits.counts(f"killed-{tag}", "all") == (0, 0), timeout=30, what="slots")


def test_status_and_runs_show_a_queued_runs_place_in_line(app, tag):
    flow = limited(tag, 1)
    # the one slot is held by a run that never comes (for the test's length): both wait
    state = state_for(app)
    slot, ghost = Slot(f"limited-{tag}", "all", 1), "0" * 31 + "2"
    state.limits.enter(slot, ghost, None, lease=600)
    first = flow.apply_async(tag=tag, tenant="r0")
    second = flow.apply_async(tag=tag, tenant="r1")
    env = base_env(app.conf.graph_redis_url, CELERY_GRAPH_KEY_PREFIX=app.conf.graph_key_prefix)
    try:
        table = cli("status", second.id, env=env)
        assert table.returncode == 0, table.stderr
        assert "state     queued (#2 in line)" in table.stdout
        data = json.loads(cli("status", second.id, "--json", env=env).stdout)
        assert data["state"] == "queued" and data["position"] == 2
        listing = cli("runs", "-n", "50", "--json", env=env)
        rows = {r["run_id"]: r for r in json.loads(listing.stdout)}
        assert rows[first.id]["position"] == 1 and rows[second.id]["position"] == 2
        table = cli("runs", "-n", "50", env=env).stdout
        assert re.search(rf"^{second.id}\s+queued \(#2 in line\)", table, re.M), table
    finally:
        second.cancel()
        first.cancel()
        state.limits.leave(slot.scope, slot.group, ghost, 30)


def test_a_limited_flows_signature_and_beat_entry_obey_the_limit(app, tag):
    """flow.s() (a canvas step, a beat entry) carries the limit with the graph."""
    flow = limited(tag, 1, seconds=0.5)
    sigs = [flow.s(tag=tag, tenant=f"r{i}") for i in range(3)]
    for sig in sigs:
        sig.apply_async()
    state = state_for(app)
    wait_for(
        lambda: (
            state.limits.counts(f"limited-{tag}", "all") == (0, 0)
            and read_trace(tag).count("end:r0")
            + read_trace(tag).count("end:r1")
            + read_trace(tag).count("end:r2")
            == 3
        ),
        timeout=90,
        what="the three runs to end",
    )
    assert most_at_once(read_trace(tag)) == 1, read_trace(tag)


pytest_plugins = ("tests.support.ui_fixtures",)  # ui, http: the dashboard over the session's app


def test_the_dashboard_shows_queued_runs_with_their_place_in_line(app, http, tag):
    flow = limited(tag, 1, seconds=5.0)
    first = flow.apply_async(tag=tag, tenant="r0")
    second = flow.apply_async(tag=tag, tenant="r1")
    try:
        data = http.get(f"/api/runs/{second.id}")
        assert data["state"] == "queued" and data["position"] == 1
        assert data["actions"]["cancel"] is True
        page = http.get(f"/api/runs?state=queued&flow=limited-{tag}")
        rows = {r["run_id"]: r for r in page["runs"]}
        assert set(rows) == {second.id} and rows[second.id]["position"] == 1
        assert http.post(f"/api/runs/{second.id}/cancel")["cancelled"] is True
    finally:
        first.cancel()
