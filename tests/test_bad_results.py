"""Bad results and unknown tasks fail the run with an error naming the culprit."""

from __future__ import annotations

import pytest

from celery_graph import RunFailed, task
from tests.tasks import big_result, read_trace, step, unencodable


def test_unencodable_result_names_node_and_type(app, tag):
    run = (unencodable >> step).apply_async(tag=tag)
    with pytest.raises(RunFailed) as info:
        run.get(timeout=20)
    assert info.value.node_id == "unencodable"
    assert info.value.exc_type == "SerializationError"
    assert "node 'unencodable': result" in info.value.exc_message
    assert "type object" in info.value.exc_message
    assert "start:step" not in read_trace(tag)


def test_result_over_the_size_limit_fails_the_run(app, tag):
    app.conf.graph_max_result_bytes = 5000
    try:
        ok = big_result.bind(id="small", size=100).as_graph().apply_async()
        assert len(ok.get(timeout=20)) == 100
        run = (big_result.bind(size=10_000) >> step).apply_async(tag=tag)
        with pytest.raises(RunFailed) as info:
            run.get(timeout=20)
    finally:
        app.conf.graph_max_result_bytes = None
    assert info.value.exc_type == "ResultTooLarge"
    assert "node 'big_result'" in info.value.exc_message
    assert "10002 bytes" in info.value.exc_message
    assert run.results() == {}


def test_task_unknown_to_the_worker_fails_the_run_clearly(app, tag):
    # registered after the worker started, so the worker has no strategy for it, like a
    # graph submitted by newer code than the worker runs
    def newer_code():
        return 1

    node = task(name="tests.registered_after_worker_start")(newer_code)
    run = (step >> node).apply_async(tag=tag)
    with pytest.raises(RunFailed) as info:
        run.get(timeout=20)
    assert info.value.node_id == "newer_code"
    assert info.value.exc_type == "UnknownTask"
    assert "'tests.registered_after_worker_start' is not registered" in info.value.exc_message
