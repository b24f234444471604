"""Group failure policies: strict (default), best effort, at least N, critical members."""

from __future__ import annotations

import pytest

from celery_graph import GraphDefinitionError, RunFailed
from tests.tasks import boom, collect, read_trace, source, step


def _members(*failing: str, ok: tuple[str, ...] = ("a", "b", "c")):
    nodes = [source.bind(id=n, value=i) for i, n in enumerate(ok, start=1)]
    nodes += [boom.bind(id=n) for n in failing]
    return nodes


def _group(nodes):
    group = nodes[0]
    for n in nodes[1:]:
        group = group | n
    return group


def test_strict_is_the_default(app, tag):
    run = (_group(_members("x")).named("batch") >> collect).apply_async(tag=tag)
    with pytest.raises(RunFailed) as info:
        run.get(timeout=20)
    assert info.value.node_id == "x"


def test_best_effort_runs_the_join_with_none_for_failed_members(app, tag):
    group = _group(_members("x", "y")).named("batch").with_policy(best_effort=True)
    run = (group >> collect).apply_async(tag=tag)
    assert run.get(timeout=20) == [1, 2, 3, None, None]
    status = run.status()
    assert status.state == "succeeded"
    assert status.nodes["x"].state == "failed"
    assert status.nodes["x"].error["type"] == "ValueError"
    assert status.nodes["x"].error["message"] == "boom went the node"
    assert status.nodes["collect"].state == "succeeded"


def test_at_least_n_met(app, tag):
    group = _group(_members("x", ok=("a", "b"))).named("batch").with_policy(at_least=2)
    assert (group >> collect).apply_async(tag=tag).get(timeout=20) == [1, 2, None]


def test_at_least_n_missed_fails_naming_group_and_members(app, tag):
    group = _group(_members("x", "y", ok=("a", "b"))).named("batch").with_policy(at_least=3)
    run = (group >> collect >> step.bind(name="after")).apply_async(tag=tag)
    with pytest.raises(RunFailed) as info:
        run.get(timeout=20)
    assert info.value.exc_type == "GroupPolicyFailed"
    assert "group 'batch'" in info.value.exc_message
    assert "at most 2 of 4 members can succeed, 3 must" in info.value.exc_message
    assert "x" in info.value.exc_message and "y" in info.value.exc_message
    assert "start:after" not in read_trace(tag)
    assert "start:collect" not in read_trace(tag)


def test_critical_member_failing_fails_the_run(app, tag):
    nodes = _members("x", "y")
    group = _group(nodes).named("batch").with_policy(critical=["a", "x"])
    run = (group >> collect).apply_async(tag=tag)
    with pytest.raises(RunFailed) as info:
        run.get(timeout=20)
    assert "critical member(s) x failed" in info.value.exc_message


def test_critical_members_succeeding_tolerate_others(app, tag):
    group = _group(_members("x")).named("batch").with_policy(critical=["a", "b"])
    assert (group >> collect).apply_async(tag=tag).get(timeout=20) == [1, 2, 3, None]


def test_policy_validation():
    with pytest.raises(GraphDefinitionError, match="exactly one of"):
        (source | step).with_policy()
    with pytest.raises(GraphDefinitionError, match="between 1 and 2"):
        (source | step).with_policy(at_least=3)
    with pytest.raises(GraphDefinitionError, match="not members"):
        (source | step).with_policy(critical=["nope"])
    with pytest.raises(GraphDefinitionError, match="not a single node"):
        ((source >> step) | boom).with_policy(best_effort=True)
