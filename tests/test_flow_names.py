"""Runs record their flow name: given at submission, a workflow's name, or named once
where the flow is defined (``with_name``); a graph's signature carries it into a canvas or
a beat schedule. The run record, ``RunStatus.flow`` and the flow index show it."""

from __future__ import annotations

import uuid

import pytest
from celery import chain

from celery_graph import GraphDefinitionError, GraphRun, NamedFlow, node, workflow
from celery_graph.client.submit import run_id_for
from celery_graph.errors import RunNotFound
from celery_graph.state import state_for
from tests.support.helpers import wait_for
from tests.tasks import audit, extract, incr, load, offset, times_two, transform

ETL = (extract >> (transform | audit) >> load).with_name("etl-named")


def listed(app, flow: str, run_id: str) -> bool:
    state = state_for(app)
    k = state.keys
    client = state.runs.client
    return (
        client.zscore(k.flow_runs(flow), run_id) is not None
        and client.zscore(k.flows_index(), flow) is not None
    )


def fresh(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def test_with_name_names_every_run(app):
    assert isinstance(ETL, NamedFlow) and ETL.flow_name == "etl-named"
    run = ETL.apply_async(n=2)
    run.get(timeout=20)
    assert run.status().flow == "etl-named"
    assert GraphRun(run.id, app=app).flow_name == "etl-named"
    assert listed(app, "etl-named", run.id)


def test_flow_name_at_submission_wins(app):
    name = fresh("adhoc")
    run = ETL.apply_async(n=1, flow_name=name)
    run.get(timeout=20)
    assert run.status().flow == name
    assert listed(app, name, run.id)
    other = (incr >> times_two).submit({"input": 1}, flow_name=fresh("submitted"))
    assert other.get(timeout=20) == 4
    assert other.flow_name.startswith("submitted-")


def test_a_workflow_is_named_by_its_name(app):
    name = fresh("wf")
    with workflow(name) as wf:
        incr >> times_two
    run = wf.apply_async(input=3)
    assert run.get(timeout=20) == 8
    assert run.status().flow == name
    assert listed(app, name, run.id)


def test_an_unnamed_flow_records_no_name(app):
    run = (incr >> times_two).apply_async(input=0)
    run.get(timeout=20)
    assert run.status().flow is None
    assert run.flow_name is None
    assert "flow" not in state_for(app).runs.record(run.id)


def test_a_one_node_graph_can_be_named(app):
    name = fresh("single")
    run = incr.as_graph(name).apply_async(input=1)
    assert run.get(timeout=20) == 2
    assert run.flow_name == name


def test_composing_a_named_flow_makes_an_unnamed_one(app):
    bigger = ETL >> offset_node()
    assert bigger.flow_name is None
    assert bigger.with_name("bigger").flow_name == "bigger"


def offset_node():
    return node(offset, id="shift", value=1)


def test_a_canvas_step_carries_the_name(app):
    name = fresh("canvas")
    flow = (incr >> times_two).with_name(name)
    sig = flow.s()
    assert sig.kwargs["flow"] == name
    result = chain(offset.s(1, by=0), sig, offset.s(by=100)).apply_async()
    assert result.get(timeout=30) == (1 + 1) * 2 + 100
    step_id = result.parent.id  # the graph's step in the chain
    run = GraphRun(run_id_for(f"celery-task:{step_id}"), app=app)
    assert run.flow_name == name
    assert run.status().flow == name
    assert listed(app, name, run.id)


def test_a_beat_entry_carries_the_name(app):
    name = fresh("beat")
    sig = (incr >> times_two).with_name(name).s(input=4)
    # what beat sends for {"task": sig.task, "kwargs": sig.kwargs, "schedule": ...}
    sent = app.send_task(sig.task, kwargs=sig.kwargs)
    run = GraphRun(run_id_for(f"celery-task:{sent.id}"), app=app)

    def started() -> bool:
        try:
            return bool(run.ready() or True)
        except RunNotFound:
            return False

    wait_for(started, timeout=20, what="the run_graph task to start the run")
    assert run.get(timeout=20) == 10
    assert run.flow_name == name
    assert listed(app, name, run.id)


def test_s_takes_a_flow_name_too(app):
    sig = (incr >> times_two).s(flow_name="given", input=1)
    assert sig.kwargs["flow"] == "given" and sig.kwargs["inputs"] == {"input": 1}
    assert "flow" not in (incr >> times_two).s(input=1).kwargs


@pytest.mark.parametrize("bad", ["", "   ", "a\nb", "x" * 201, 7])
def test_bad_flow_names_are_refused_before_anything_is_sent(app, published, bad):
    with pytest.raises(GraphDefinitionError, match="invalid flow name"):
        (incr >> times_two).with_name(bad)
    with pytest.raises(GraphDefinitionError, match="invalid flow name"):
        (incr >> times_two).apply_async(input=1, flow_name=bad)
    assert published == []
