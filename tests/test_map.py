"""Dynamic fan-out: node.map(source) runs one task per item produced at run time."""

from __future__ import annotations

import pytest

from celery_graph import GraphDefinitionError, RunFailed
from tests.tasks import join_count, merge, process, read_trace, source, split, step


def test_map_runs_one_task_per_item_and_merge_gets_results_in_item_order(any_app, tag):
    run = (split >> process.map("split") >> merge).apply_async(n=7, tag=tag)
    assert run.get(timeout=30) == [f"ITEM{i}" for i in range(7)]
    assert sorted(e for e in read_trace(tag) if e.startswith("process:")) == sorted(
        f"process:item{i}" for i in range(7))
    assert run.results()["process"] == [f"ITEM{i}" for i in range(7)]
    assert not any("#" in k for k in run.results())


def test_empty_list_goes_straight_to_merge(any_app, tag):
    run = (split >> process.map("split") >> merge).apply_async(n=0, tag=tag)
    assert run.get(timeout=20) == []
    assert not any(e.startswith("process:") for e in read_trace(tag))


def test_join_after_a_map_runs_once(app, tag):
    flow = split >> (process.map("split") | step.bind(id="side", name="side")) >> join_count
    run = flow.apply_async(n=25, tag=tag)
    assert run.get(timeout=30) == "join_count"
    assert read_trace(tag).count("start:join_count") == 1


def test_map_over_a_thousand_items(app):
    run = (split >> process.map("split") >> merge).apply_async(n=1000)
    result = run.get(timeout=120)
    assert len(result) == 1000 and result[999] == "ITEM999"


def test_map_source_that_is_not_a_list_fails_clearly(app):
    run = (source.bind(value=3) >> process.map("source", param="split")).apply_async()
    with pytest.raises(RunFailed) as info:
        run.get(timeout=20)
    assert info.value.node_id == "process"
    assert "map('source') needs a list" in info.value.exc_message
    assert "returned int" in info.value.exc_message


def test_map_source_must_be_upstream():
    with pytest.raises(GraphDefinitionError, match="needs 'split' to be an upstream node"):
        (process.map("split") | split).compile()
