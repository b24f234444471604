"""DSL depth: delays and run-scoped shared state."""

from __future__ import annotations

import pytest

from celery_graph import GraphDefinitionError, Parallel
from celery_graph.state import state_for
from tests.tasks import bump, step, tally


def test_delay_by_starts_a_node_no_earlier_than_the_delay(app, tag):
    flow = step.bind(id="a", name="a") >> step.bind(id="b", name="b").delay_by(1.0)
    run = flow.apply_async(tag=tag)
    assert run.get(timeout=20) == "b"
    nodes = run.status().nodes
    assert nodes["b"].started - nodes["a"].finished >= 1.0


def test_delay_by_on_a_group_delays_each_member(app, tag):
    group = (step.bind(id="x", name="x") | step.bind(id="y", name="y")).delay_by(0.6)
    run = (step.bind(id="a", name="a") >> group).apply_async(tag=tag)
    run.get(timeout=20)
    nodes = run.status().nodes
    for member in ("x", "y"):
        assert nodes[member].started - nodes["a"].finished >= 0.6


def test_delay_by_rejects_negative():
    with pytest.raises(GraphDefinitionError, match="non-negative"):
        step.delay_by(-1)


def test_parallel_context_increments_never_lose_an_update(app, rclient):
    members = Parallel(tuple(bump.bind(id=f"b{i}", name=f"b{i}") for i in range(20)))
    run = (members >> tally).apply_async()
    result = run.get(timeout=60)
    assert result == {"hits": 1000, "weight": 10.0, "seen": sorted(f"b{i}" for i in range(20))}
    assert run.results()["b0"] == run.id  # the context knows its run
    assert run.context().get("done") is True
    state_key = state_for(app).keys.state(run.id)
    assert 0 < rclient.ttl(state_key) <= state_for(app).settings.result_ttl


def test_inject_context_needs_a_first_parameter():
    from celery_graph import task

    def no_params():
        return 1

    node = task(name="tests.ctx_without_params", inject_context=True)(no_params)
    with pytest.raises(GraphDefinitionError, match="first positional parameter"):
        node.compile()
