"""wait_for(name, timeout): a node that completes when its run is signalled, with no
worker slot held and nothing polling; run.signal(name, payload) and the command line."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from celery_graph import (
    GraphDefinitionError,
    RunFailed,
    SignalRefused,
    wait_for,
)
from celery_graph.cli.groups import celery_graph
from tests.after_tasks import alert, prepare, ship_if_approved
from tests.support.helpers import wait_for as wait_until
from tests.tasks import read_trace


def approval_flow(timeout=None):
    return prepare >> wait_for("approval", timeout=timeout) >> ship_if_approved


def test_a_wait_completes_with_the_signal_and_holds_no_worker(app, tag, rclient):
    run = approval_flow().apply_async(tag=tag)
    status = wait_until(
        lambda: (s := run.status()).nodes["approval"].state == "waiting" and s,
        timeout=20,
        what="the wait",
    )
    node = status.nodes["approval"]
    assert node.waiting_since is not None and node.waiting_since >= status.created
    assert node.lease is None  # no timeout: nothing for the reconciler to look at
    keys = app.conf.graph_key_prefix
    assert rclient.zscore(f"{keys}:run:{{{run.id}}}:leases", "approval") is None
    assert rclient.zscore(f"{keys}:run:{{{run.id}}}:queued", "approval") is None
    # no worker holds it: nothing is active on the worker
    active = app.control.inspect(timeout=2).active() or {}
    assert not any(t["name"] == "celery_graph.wait" for ts in active.values() for t in ts)
    doc = status.as_json()
    assert doc["waits"] == {
        "approval": {"signal": "approval", "since": node.waiting_since, "timeout_at": None}
    }
    assert "waits for its signal" in status.stalled()["approval"]
    assert run.signal("approval", {"approved": True, "by": "ana"}) is True
    assert run.get(timeout=30) == "shipped"
    assert 'ship:{"approved": true, "by": "ana"}' in read_trace(tag)
    assert run.results()["approval"] == {"approved": True, "by": "ana"}
    final = run.status().nodes["approval"]
    assert final.state == "succeeded" and final.signalled is not None


def test_a_signal_sent_before_the_run_reaches_the_wait_is_kept(app, tag):
    flow = prepare.bind(tag=tag) >> wait_for("approval") >> ship_if_approved
    from tests.after_tasks import wait_a_bit

    flow = wait_a_bit.bind(delay=1.0) >> flow
    run = flow.apply_async(tag=tag)
    assert run.signal("approval", {"approved": False, "by": "bob"}) is False
    assert run.get(timeout=30) == "not shipped"
    assert run.status().nodes["approval"].waiting_since is None  # never waited


def test_signals_that_cannot_be_delivered_name_the_run_and_the_wait(app, tag):
    run = approval_flow().apply_async(tag=tag)
    with pytest.raises(SignalRefused, match=rf"run {run.id} has no wait 'aproval'.*'approval'"):
        run.signal("aproval", {"approved": True})
    with pytest.raises(SignalRefused, match=r"no wait 'prepare'"):
        run.signal("prepare", {})
    run.signal("approval", {"approved": True})
    # refused because the wait had its signal, or, when the nodes after it were quicker
    # than this second signal, because the run ended
    had = rf"wait 'approval' of run {run.id} has had its|run {run.id} has ended \(succeeded\)"
    with pytest.raises(SignalRefused, match=had):
        run.signal("approval", {"approved": False})
    assert run.get(timeout=30) == "shipped"
    with pytest.raises(SignalRefused, match=rf"run {run.id} has ended \(succeeded\): wait"):
        run.signal("approval", {"approved": True})


def test_a_wait_times_out_with_wait_timeout_and_on_failure_applies(app, tag):
    run = approval_flow(timeout=1).on_failure(alert).apply_async(tag=tag)
    with pytest.raises(RunFailed) as info:
        run.get(timeout=60)  # the in-process worker's reconciler fires the timeout
    assert info.value.node_id == "approval"
    assert info.value.exc_type == "WaitTimeout"
    assert "not signalled within 1 s" in info.value.exc_message
    alerts = [json.loads(e[6:]) for e in read_trace(tag) if e.startswith("alert:")]
    assert [a["exc_type"] for a in alerts] == ["WaitTimeout"]
    # the reconciler failed the node: Celery's result backend says so too
    result = app.AsyncResult(f"{run.id}:approval")
    assert result.state == "FAILURE"
    assert type(result.result).__name__ == "WaitTimeout"
    assert "not signalled within 1 s" in str(result.result)
    with pytest.raises(SignalRefused, match="has ended"):
        run.signal("approval", {"approved": True})


def test_the_command_line_signals_a_run(app, tag):
    run = approval_flow().apply_async(tag=tag)
    wait_until(lambda: run.status().nodes["approval"].state == "waiting", what="the wait")
    where = ["--redis-url", app.conf.graph_redis_url, "--key-prefix", app.conf.graph_key_prefix]
    text = CliRunner().invoke(celery_graph, ["status", run.id, *where])
    assert "approval" in text.output and "waits for its signal" in text.output, text.output
    bad = CliRunner().invoke(
        celery_graph, ["signal", run.id, "approval", "--data", "{not json", *where]
    )
    assert bad.exit_code != 0 and "--data" in bad.output, bad.output
    wrong = CliRunner().invoke(celery_graph, ["signal", run.id, "nope", "--data", "1", *where])
    assert wrong.exit_code != 0 and "no wait 'nope'" in wrong.output, wrong.output
    ok = CliRunner().invoke(
        celery_graph,
        ["signal", run.id, "approval", "--data", '{"approved": true, "by": "cli"}', *where],
    )
    assert ok.exit_code == 0, ok.output
    assert "delivered" in ok.output
    assert run.get(timeout=30) == "shipped"


def test_bad_waits_are_refused_before_anything_is_sent():
    with pytest.raises(GraphDefinitionError, match="timeout is a number of seconds"):
        wait_for("approval", timeout=0)
    with pytest.raises(GraphDefinitionError, match="invalid node id"):
        wait_for("has space")


def test_a_run_that_only_waits_costs_the_reconciler_nothing_until_woken(app, tag, rclient):
    """No lease left: the reconciler's next look is minutes away (or the deadline), not a
    queued lease; the signal lists it again, due at once."""
    from celery_graph.engine.reconcile import IDLE_MIN, Reconciler, Sweep
    from celery_graph.state import state_for

    state = state_for(app)
    run = approval_flow().apply_async(tag=tag, deadline=3600)
    wait_until(lambda: run.status().nodes["approval"].state == "waiting", what="the wait")
    now = Reconciler(app).reconcile(state, run.id, Sweep())
    index = state.keys.running_index()
    later = rclient.zscore(index, run.id)
    assert later >= now + IDLE_MIN - 1, (later, now)
    assert later <= float(state.runs.record(run.id)["deadline"]) + 1
    assert run.signal("approval", {"approved": True}) is True
    assert rclient.zscore(index, run.id) < now + 1  # due again at once
    assert run.get(timeout=30) == "shipped"


def test_a_run_whose_wait_timed_out_resumes_and_waits_afresh(app, tag):
    run = approval_flow(timeout=1).apply_async(tag=tag)
    with pytest.raises(RunFailed):
        run.get(timeout=60)
    first = run.status().nodes["approval"]
    run.resume()
    status = wait_until(
        lambda: (s := run.status()).nodes["approval"].state == "waiting" and s,
        what="the wait again",
    )
    assert status.nodes["approval"].waiting_since > first.waiting_since
    assert run.signal("approval", {"approved": True, "by": "late"}) is True
    assert run.get(timeout=30) == "shipped"


def test_cancel_a_waiting_run(app, tag):
    run = approval_flow().apply_async(tag=tag)
    wait_until(lambda: run.status().nodes["approval"].state == "waiting", what="the wait")
    assert run.cancel()
    with pytest.raises(SignalRefused, match=r"has ended \(cancelled\)"):
        run.signal("approval", {"approved": True})
