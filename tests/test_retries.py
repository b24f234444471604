"""Celery's own retry options work on graph nodes, and the run state shows the attempts."""

from __future__ import annotations

import pytest

from celery_graph import RunFailed
from tests.tasks import (
    flaky,
    needs_upstream_autoretry,
    needs_upstream_once,
    needs_upstream_store_away,
    read_trace,
    step,
)


def test_autoretry_then_success_records_attempts(app, tag):
    run = (flaky >> step.bind(name="after")).apply_async(tag=tag)
    assert run.get(timeout=30) == "after"
    assert run.results()["flaky"] == 3
    status = run.status()
    assert status.nodes["flaky"].attempts == 3
    assert status.nodes["flaky"].state == "succeeded"
    assert read_trace(tag).count("start:after") == 1


def test_retries_exhausted_fail_the_run(app, tag):
    run = (flaky.bind(fail_times=10) >> step.bind(name="after")).apply_async(tag=tag)
    with pytest.raises(RunFailed) as info:
        run.get(timeout=30)
    assert info.value.node_id == "flaky"
    assert info.value.exc_type == "ConnectionError"
    assert run.status().nodes["flaky"].attempts == 4  # first try + max_retries=3
    assert "start:after" not in read_trace(tag)


@pytest.mark.parametrize(
    "second",
    [
        needs_upstream_autoretry,  # Celery's autoretry_for (task.retry)
        needs_upstream_once.with_retries(1, delay=0),  # the node's own retries
        needs_upstream_store_away,  # an infrastructure error: the message sent again
    ],
    ids=["autoretry_for", "with_retries", "sent_again"],
)
def test_a_node_whose_arguments_come_from_upstream_is_sent_again(app, tag, second):
    """Its message carries none of its required arguments (they come from the run when it
    runs): Celery's argument check when sending it again (``typing``) raised TypeError
    ("missing 1 required positional argument"), which failed the node instead of
    retrying it."""
    run = (step.bind(name="up") >> second).apply_async(tag=tag)
    assert run.get(timeout=30) == "up+2"
    assert run.status().nodes[second.id].state == "succeeded"
