"""Dynamic fan-out: node.map(source) runs one task per item produced at run time."""

from __future__ import annotations

import pytest

from celery_graph import GraphDefinitionError, RunFailed
from tests.tasks import (
    gather_items,
    item_fails_once,
    join_count,
    merge,
    process,
    read_trace,
    source,
    split,
    step,
)


def test_map_runs_one_task_per_item_and_merge_gets_results_in_item_order(any_app, tag):
    run = (split >> process.map("split") >> merge).apply_async(n=7, tag=tag)
    assert run.get(timeout=30) == [f"ITEM{i}" for i in range(7)]
    assert sorted(e for e in read_trace(tag) if e.startswith("process:")) == sorted(
        f"process:item{i}" for i in range(7)
    )
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


def test_a_chunked_map_sends_one_message_per_chunk_and_calls_per_item(any_app, tag, published):
    flow = split >> process.map("split", chunk=3) >> merge
    run = flow.apply_async(n=10, tag=tag)
    assert run.get(timeout=30) == [f"ITEM{i}" for i in range(10)]
    calls = [e for e in read_trace(tag) if e.startswith("process:")]
    assert sorted(calls) == sorted(f"process:item{i}" for i in range(10))
    ours = [
        m
        for m in published
        if (m["body"][1].get("_graph") or {}).get("r") == run.id
        and m["body"][1]["_graph"]["n"] == "process"
    ]
    chunks = [m["body"][1]["split"] for m in ours if "i" in m["body"][1]["_graph"]]
    if chunks:  # the messages this process saw (on RabbitMQ the worker sends them)
        assert sorted(len(c) for c in chunks) == [1, 3, 3, 3]
    assert run.results()["process"] == [f"ITEM{i}" for i in range(10)]


def test_a_chunk_delivered_again_skips_the_items_already_done(app, tag):
    """An item fails once in the middle of its chunk; the chunk is retried and calls only
    the items without a stored result."""
    flow = (
        split
        >> item_fails_once.bind(tag=tag).map("split", chunk=5).with_retries(1, delay=0)
        >> gather_items
    )
    run = flow.apply_async(n=10)
    assert run.get(timeout=30) == [f"ITEM{i}" for i in range(10)]
    trace = read_trace(tag)
    assert trace.count("call:item3") == 2  # failed, then retried
    for i in (0, 1, 2, 4, 5, 9):
        assert trace.count(f"call:item{i}") == 1, trace  # done once, skipped on the retry


def test_a_failing_item_in_a_chunk_fails_the_run_naming_the_node(app, tag):
    flow = split >> item_fails_once.bind(tag=tag, always=True).map("split", chunk=4)
    flow = flow >> gather_items
    run = flow.apply_async(n=6)
    with pytest.raises(RunFailed) as info:
        run.get(timeout=30)
    assert info.value.node_id == "item_fails_once"
    assert info.value.exc_message == "item3 fails"


def test_a_chunk_must_be_a_whole_number_of_items():
    for bad in (0, -2, 1.5, True):
        with pytest.raises(GraphDefinitionError, match="chunk"):
            process.map("split", chunk=bad)
