"""child(flow, **inputs) returned by a node: a child run of its own, linked both ways;
the node's result is the child's, its failure the node's; nothing blocks; cancelling the
parent cancels its children."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from celery_graph import (
    GraphRun,
    MissingParameterError,
    RunCancelled,
    RunFailed,
    UnknownInputError,
    child,
)
from celery_graph.cli.groups import celery_graph
from celery_graph.model import child_run_id
from tests.after_tasks import invoice, per_customer, summary
from tests.support.helpers import most_at_once, wait_for
from tests.tasks import read_trace

pytest_plugins = ("tests.support.ui_fixtures",)  # fixtures: ui, http


def test_a_node_takes_the_result_of_its_child_run(app, tag):
    run = (per_customer >> summary).apply_async(customer="acme", tag=tag)
    assert run.get(timeout=30) == {"invoiced": {"customer": "acme", "total": 4}}
    status = run.status()
    kid = status.nodes["per_customer"].child
    assert kid == child_run_id(run.id, "per_customer")
    assert status.children == {"per_customer": kid}
    sub = GraphRun(kid, app=app).status()
    assert (sub.parent, sub.parent_node, sub.state) == (run.id, "per_customer", "succeeded")
    assert sub.flow == "invoice"
    assert sub.as_json()["parent"] == run.id
    assert status.as_json()["children"] == {"per_customer": kid}
    assert run.summary().children == {"per_customer": kid}  # from the run record, no node read
    assert read_trace(tag) == ["invoice:acme", "summary"]
    assert app.conf.graph_key_prefix in GraphRun(kid, app=app)._state.keys.run(kid)


def test_a_failed_child_fails_the_node_naming_the_child(app, tag):
    run = (per_customer >> summary).apply_async(customer="bad", tag=tag)
    with pytest.raises(RunFailed) as info:
        run.get(timeout=30)
    kid = child_run_id(run.id, "per_customer")
    assert info.value.node_id == "per_customer"
    assert info.value.exc_type == "ValueError"
    assert f"child run {kid} failed in node 'invoice'" in info.value.exc_message
    assert "no address for bad" in info.value.exc_message
    assert "summary" not in read_trace(tag)
    # the child's failure failed the node: Celery's result backend says so, with its type
    result = app.AsyncResult(f"{run.id}:per_customer")
    assert result.state == "FAILURE"
    assert isinstance(result.result, ValueError)
    assert f"child run {kid} failed in node 'invoice'" in str(result.result)


def test_the_node_holds_no_worker_while_its_child_runs(app, tag):
    run = per_customer.bind(delay=2.0).as_graph().apply_async(customer="slow", tag=tag)
    status = wait_for(
        lambda: (s := run.status()).nodes["per_customer"].state == "child" and s,
        timeout=20,
        what="the node to wait for its child",
    )
    assert status.nodes["per_customer"].lease is None
    assert "waits for its child run" in status.stalled()["per_customer"]
    assert run.get(timeout=30) == {"customer": "slow", "total": 4}


def test_cancelling_the_parent_cancels_its_children(app, tag):
    run = per_customer.bind(delay=3.0).as_graph().apply_async(customer="acme", tag=tag)
    kid = child_run_id(run.id, "per_customer")
    wait_for(lambda: run.status().nodes["per_customer"].state == "child", what="the child")
    assert run.cancel()
    with pytest.raises(RunCancelled):
        GraphRun(kid, app=app).get(timeout=30)
    with pytest.raises(RunCancelled):
        run.get(timeout=30)


def test_status_links_parent_and_child(app, tag):
    run = per_customer.as_graph().apply_async(customer="acme", tag=tag)
    run.get(timeout=30)
    kid = child_run_id(run.id, "per_customer")
    where = ["--redis-url", app.conf.graph_redis_url, "--key-prefix", app.conf.graph_key_prefix]
    parent = CliRunner().invoke(celery_graph, ["status", run.id, *where])
    assert f"child     {kid} (node per_customer)" in parent.output, parent.output
    sub = CliRunner().invoke(celery_graph, ["status", kid, *where])
    assert f"parent    {run.id} (node per_customer)" in sub.output, sub.output


def test_child_checks_its_inputs_where_the_node_returns_it():
    with pytest.raises(MissingParameterError, match="required parameter 'customer'"):
        child(invoice.as_graph())
    with pytest.raises(UnknownInputError, match="'nope' are a parameter of no node"):
        child(invoice.as_graph(), customer="x", nope=1)


def test_the_dashboard_links_parent_and_child(app, http, tag):
    run = per_customer.as_graph().apply_async(customer="acme", tag=tag)
    run.get(timeout=30)
    kid = child_run_id(run.id, "per_customer")
    assert http.get(f"/api/runs/{run.id}")["children"] == {"per_customer": kid}
    assert http.get(f"/api/runs/{run.id}/nodes/per_customer")["child"] == kid
    sub = http.get(f"/api/runs/{kid}")
    assert (sub["parent"], sub["parent_node"]) == (run.id, "per_customer")
    rows = {r["run_id"]: r for r in http.get("/api/runs")["runs"]}
    assert rows[kid]["parent"] == run.id
    assert rows[run.id]["parent"] is None


def test_a_child_flow_per_customer_from_a_map(app, tag):
    from tests.after_tasks import customers, report

    flow = customers >> per_customer.map("customers", param="customer") >> report
    run = flow.apply_async(names="acme,globex,initech", tag=tag)
    assert run.get(timeout=60) == ["acme", "globex", "initech"]
    kids = run.status().children
    assert set(kids) == {"per_customer#0", "per_customer#1", "per_customer#2"}
    assert kids["per_customer#1"] == child_run_id(run.id, "per_customer#1")
    assert GraphRun(kids["per_customer#2"], app=app).status().parent_node == "per_customer#2"
    assert read_trace(tag).count("report") == 1


def test_a_failing_child_of_a_map_item_fails_the_run(app, tag):
    from tests.after_tasks import customers, report

    flow = customers >> per_customer.map("customers", param="customer") >> report
    run = flow.apply_async(names="acme,bad", tag=tag)
    with pytest.raises(RunFailed) as info:
        run.get(timeout=60)
    assert info.value.node_id == "per_customer"
    assert "no address for bad" in info.value.exc_message


def test_child_runs_of_a_limited_flow_take_its_slots_or_wait_queued(app, tag):
    """child() starts a run like any other of its flow: with_concurrency(1) holds across
    the children of a map and a run submitted directly; the others wait in 'queued'."""
    from tests.after_tasks import customers, limited_sync, sync_tenant

    direct = limited_sync(tag).apply_async(tag=tag, tenant="direct")
    flow = customers >> sync_tenant.map("customers", param="customer")
    run = flow.apply_async(names="a,b,c,d", tag=tag)
    kids = wait_for(
        lambda: len(k := run.status().children) == 4 and k, timeout=30, what="4 children"
    )
    states = [GraphRun(k, app=app).status().state for k in kids.values()]
    assert states.count("queued") >= 2, states
    assert run.get(timeout=90) == ["a", "b", "c", "d"]
    assert direct.get(timeout=30) == "direct"
    trace = read_trace(tag)
    assert trace.count("end:a") == 1 and trace.count("end:direct") == 1, trace
    assert most_at_once(trace) == 1, trace
