"""flow.on_failure(handler), flow.on_exit(handler) and node.compensate(undo): the steps
that follow the end of a run, through the public API with a real worker."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from celery_graph import (
    DuplicateNodeError,
    GraphDefinitionError,
    MissingParameterError,
    RunFailed,
)
from celery_graph.cli.groups import celery_graph
from tests.after_tasks import (
    alert,
    alert_fails,
    bye,
    charge,
    refund,
    release,
    reserve,
    ship,
    undo_fails,
    wait_a_bit,
)
from tests.support.helpers import wait_for
from tests.tasks import read_trace, step


def test_on_failure_runs_once_with_the_failure_and_the_run_stays_failed(app, tag):
    flow = (step.bind(name="first") >> ship).on_failure(alert.bind(delay=0.5))
    run = flow.apply_async(tag=tag)
    # while the handler runs the run is finishing, not failed yet
    wait_for(lambda: run.status().state == "finishing", timeout=20, what="finishing")
    assert not run.ready()
    with pytest.raises(RunFailed) as info:
        run.get(timeout=30)
    assert info.value.node_id == "ship"
    trace = read_trace(tag)
    alerts = [e for e in trace if e.startswith("alert:")]
    assert len(alerts) == 1, trace
    failure = json.loads(alerts[0][len("alert:") :])
    assert failure == {
        "run_id": run.id,
        "node": "ship",
        "exc_type": "ValueError",
        "exc_message": "no courier",
    }
    status = run.status()
    assert status.state == "failed"
    assert status.steps["alert"].state == "succeeded"
    assert status.roles["alert"] == "on_failure"
    # the final state is set when the handler has ended
    assert status.finished is not None and status.finished >= status.steps["alert"].finished
    assert run.status().as_json()["steps"]["alert"]["role"] == "on_failure"


def test_on_failure_does_not_run_when_the_run_succeeds(app, tag):
    flow = step.bind(name="only").on_failure(alert)
    assert flow.apply_async(tag=tag).get(timeout=30) == "only"
    assert not any(e.startswith("alert") for e in read_trace(tag))


@pytest.mark.parametrize("fails", [False, True])
def test_on_exit_runs_whatever_the_end_with_the_outcome(app, tag, fails):
    body = step.bind(name="first") >> (ship if fails else step.bind(id="second", name="second"))
    run = body.on_exit(bye).apply_async(tag=tag)
    if fails:
        with pytest.raises(RunFailed):
            run.get(timeout=30)
    else:
        assert run.get(timeout=30) == "second"
    byes = [e for e in read_trace(tag) if e.startswith("bye:")]
    state = "failed" if fails else "succeeded"
    assert [json.loads(b[4:]) for b in byes] == [{"run_id": run.id, "state": state}]
    assert run.status().state == state


def test_on_exit_runs_after_a_cancel(app, tag):
    run = (wait_a_bit.bind(delay=3.0) >> step.bind(name="next")).on_exit(bye).apply_async(tag=tag)
    wait_for(lambda: run.status().nodes["wait_a_bit"].state == "running", timeout=20, what="start")
    assert run.cancel()
    wait_for(lambda: run.ready(), timeout=30, what="the run to end")
    byes = [e for e in read_trace(tag) if e.startswith("bye:")]
    assert [json.loads(b[4:]) for b in byes] == [{"run_id": run.id, "state": "cancelled"}]
    assert run.status().state == "cancelled"
    assert "start:next" not in read_trace(tag)


def test_a_failing_handler_is_recorded_and_triggers_nothing(app, tag):
    flow = (step.bind(name="first") >> ship).on_failure(alert_fails).on_exit(bye)
    run = flow.apply_async(tag=tag)
    with pytest.raises(RunFailed) as info:
        run.get(timeout=30)
    assert info.value.node_id == "ship"  # the run's error stays the node's
    status = run.status()
    assert status.state == "failed"
    assert status.steps["alert_fails"].state == "failed"
    assert status.steps["alert_fails"].error["type"] == "RuntimeError"
    assert status.steps["bye"].state == "succeeded"  # the next step still ran
    trace = read_trace(tag)
    assert trace.count("alert_fails") == 1, trace


def test_compensations_run_in_reverse_order_of_completion_with_the_results(app, tag):
    flow = (
        charge.compensate(refund)
        >> reserve.compensate(release)
        >> step.bind(id="noted", name="noted")
        >> ship
    ).on_failure(alert)
    run = flow.apply_async(tag=tag)
    with pytest.raises(RunFailed):
        run.get(timeout=30)
    trace = read_trace(tag)
    done = [e.split(":")[0] for e in trace if e.split(":")[0] in ("release", "refund", "alert")]
    assert done == ["release", "refund", "alert"], trace
    assert 'refund:{"charged": 10}' in trace
    assert 'release:{"reserved": "book"}' in trace
    status = run.status()
    assert status.roles == {
        "charge.undo": "compensates charge",
        "reserve.undo": "compensates reserve",
        "alert": "on_failure",
    }
    assert run.results()["charge.undo"] == "refunded"


def test_only_nodes_that_succeeded_are_compensated_and_a_failing_one_does_not_stop_the_rest(
    app, tag
):
    flow = charge.compensate(refund) >> reserve.compensate(undo_fails) >> ship
    flow = flow >> step.bind(id="never", name="never")
    run = flow.apply_async(tag=tag)
    with pytest.raises(RunFailed):
        run.get(timeout=30)
    trace = read_trace(tag)
    assert trace.index("undo_fails") < trace.index('refund:{"charged": 10}'), trace
    status = run.status()
    assert status.steps["reserve.undo"].state == "failed"
    assert status.steps["charge.undo"].state == "succeeded"


def test_no_compensation_when_the_run_succeeds(app, tag):
    run = charge.compensate(refund).as_graph().apply_async(tag=tag)
    assert run.get(timeout=30) == {"charged": 10}
    assert read_trace(tag) == ["charge"]


def test_bad_handlers_are_refused_before_anything_is_sent(app):
    with pytest.raises(MissingParameterError, match=r"compensation 'charge\.undo'.*'charge'"):
        charge.compensate(release).compile()
    with pytest.raises(GraphDefinitionError, match="two different on_failure handlers"):
        step.on_failure(alert).on_failure(alert.bind(id="alert2")).compile()
    with pytest.raises(DuplicateNodeError, match="on_failure step 'step'"):
        step.on_failure(step).compile()
    with pytest.raises(GraphDefinitionError, match="one celery-graph node"):
        step.on_failure(print)  # type: ignore[arg-type]


def test_status_and_json_show_the_steps(app, tag):
    flow = (charge.compensate(refund) >> ship).on_failure(alert_fails).on_exit(bye)
    run = flow.apply_async(tag=tag)
    with pytest.raises(RunFailed):
        run.get(timeout=30)
    where = ["--redis-url", app.conf.graph_redis_url, "--key-prefix", app.conf.graph_key_prefix]
    text = CliRunner().invoke(celery_graph, ["status", run.id, *where])
    assert text.exit_code == 0, text.output
    lines = [" ".join(line.split()) for line in text.output.splitlines()]
    assert "charge.undo compensates charge succeeded 1 -" in lines, text.output
    assert "alert_fails on_failure failed 1 RuntimeError: the pager is down" in lines
    assert "bye on_exit succeeded 1 -" in lines
    doc = CliRunner().invoke(celery_graph, ["status", run.id, "--json", *where])
    steps = json.loads(doc.output)["steps"]
    assert set(steps) == {"charge.undo", "alert_fails", "bye"}
    assert steps["alert_fails"]["error"]["message"] == "the pager is down"


def test_metrics_count_handlers_compensations_signals_and_children(app, tag):
    from prometheus_client import CollectorRegistry, generate_latest

    from celery_graph import wait_for
    from celery_graph.state import state_for
    from celery_graph.worker.endpoint import WorkerCollector
    from tests.after_tasks import per_customer, prepare, ship_if_approved

    state = state_for(app)

    def scrape() -> dict[str, float]:
        registry = CollectorRegistry()
        registry.register(WorkerCollector(state, "cgtest@metrics", 0.0, list, int, None))
        out = {}
        for line in generate_latest(registry).decode().splitlines():
            if line.startswith(
                (
                    "celery_graph_steps_total",
                    "celery_graph_signals_total",
                    "celery_graph_child_runs_total",
                )
            ):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    before = scrape()
    run = (charge.compensate(refund) >> ship).on_failure(alert_fails).apply_async(tag=tag)
    with pytest.raises(RunFailed):
        run.get(timeout=30)
    waits = (prepare >> wait_for("approval") >> ship_if_approved).apply_async(tag=tag)
    waits.signal("approval", {"approved": True})
    waits.get(timeout=30)
    per_customer.as_graph().apply_async(customer="acme", tag=tag).get(timeout=30)
    after = scrape()

    def grew(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert grew('celery_graph_steps_total{kind="undo",outcome="ok"}') == 1
    assert grew('celery_graph_steps_total{kind="failure",outcome="failed"}') == 1
    assert grew("celery_graph_signals_total") == 1
    assert grew("celery_graph_child_runs_total") == 1


def test_a_resumed_run_runs_its_handlers_again_at_its_next_end(app, tag):
    from tests.tasks import fails_then_ok

    flow = (charge.compensate(refund) >> fails_then_ok).on_failure(alert).on_exit(bye)
    run = flow.apply_async(tag=tag)
    with pytest.raises(RunFailed):
        run.get(timeout=30)
    run.resume()
    assert run.get(timeout=30) == 2
    trace = read_trace(tag)
    byes = [json.loads(e[4:])["state"] for e in trace if e.startswith("bye:")]
    assert byes == ["failed", "succeeded"], trace
    assert len([e for e in trace if e.startswith("alert:")]) == 1
    assert len([e for e in trace if e.startswith("refund:")]) == 1
    status = run.status()
    assert status.state == "succeeded" and status.outcome is None


def test_a_run_past_its_deadline_runs_its_failure_handler(app, tag):
    flow = (charge.compensate(refund) >> wait_a_bit.bind(delay=3.0)).on_failure(alert)
    run = flow.apply_async(tag=tag, deadline=1)
    with pytest.raises(RunFailed) as info:
        run.get(timeout=60)
    assert info.value.exc_type == "DeadlineExceeded"
    trace = read_trace(tag)
    alerts = [json.loads(e[6:]) for e in trace if e.startswith("alert:")]
    assert [a["exc_type"] for a in alerts] == ["DeadlineExceeded"], trace
    assert 'refund:{"charged": 10}' in trace
    assert run.status().steps["alert"].state == "succeeded"


def test_a_run_cancelled_by_a_revoke_runs_its_exit_handler(app, tag):
    """Celery's revoke of a node cancels its run (docs/celery-controls.md) through the same
    end of a run: its on_exit handler runs, then the run is cancelled."""
    from celery_graph.engine.lifecycle import revoked
    from celery_graph.state import Revoked, state_for

    run = (wait_a_bit.bind(delay=2.0) >> step.bind(name="next")).on_exit(bye).apply_async(tag=tag)
    wait_for(lambda: run.status().nodes["wait_a_bit"].state == "running", what="the node")
    assert revoked(app, state_for(app), f"{run.id}:wait_a_bit") == Revoked.ENDED
    wait_for(lambda: run.ready(), timeout=30, what="the run to end")
    byes = [json.loads(e[4:]) for e in read_trace(tag) if e.startswith("bye:")]
    assert byes == [{"run_id": run.id, "state": "cancelled"}]
    assert run.status().state == "cancelled"


def test_progress_counts_the_graphs_nodes_not_its_handlers(app):
    flow = (charge.compensate(refund) >> step.bind(name="x")).on_failure(alert).on_exit(bye)
    spec = flow.compile()
    assert spec.order == ("charge", "step") and set(spec.steps) == {"charge.undo", "alert", "bye"}
    assert spec.roots == ("charge",) and spec.sinks == ("step",)
    run = flow.apply_async()
    run.get(timeout=30)
    assert run._state.runs.record(run.id)["nodes"] == "2"
