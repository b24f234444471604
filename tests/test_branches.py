"""Conditional branches: a node chooses its successors; the rest are skipped."""

from __future__ import annotations

import uuid

import pytest

from celery_graph import RunFailed
from celery_graph.state import state_for
from tests.tasks import after_branches, left, read_trace, right, right_more, route


def test_only_the_chosen_branch_runs_and_the_join_still_runs_once(any_app, tag):
    flow = route >> (left | right) >> after_branches
    run = flow.apply_async(which="left", tag=tag)
    assert run.get(timeout=20) == {"left": "left", "right": None}
    trace = read_trace(tag)
    assert "start:right" not in trace
    assert trace.count("start:after_branches") == 1
    nodes = run.status().nodes
    assert nodes["right"].state == "skipped"
    assert nodes["left"].state == "succeeded"
    assert run.results()["route"] == "routed:left"


def test_a_skip_passes_down_a_branch_until_a_join(any_app, tag):
    flow = route >> (left | (right >> right_more)) >> after_branches
    run = flow.apply_async(which="left", tag=tag)
    assert run.get(timeout=20) == {"left": "left", "right": None}
    nodes = run.status().nodes
    assert nodes["right"].state == nodes["right_more"].state == "skipped"
    assert "start:right_more" not in read_trace(tag)


def test_both_branches_chosen(any_app, tag):
    run = (route >> (left | right) >> after_branches).apply_async(which="left+right", tag=tag)
    assert run.get(timeout=20) == {"left": "left", "right": "right"}


def test_choosing_nothing_skips_to_the_end_and_the_run_succeeds(any_app, tag):
    run = (route >> (left | right) >> after_branches).apply_async(which="none", tag=tag)
    assert run.get(timeout=20) is None  # the only sink was skipped
    assert run.status().state == "succeeded"
    assert run.status().nodes["after_branches"].state == "skipped"
    assert read_trace(tag) == ["start:route"]


def test_choosing_a_node_that_is_not_a_successor_fails_clearly(app, tag):
    run = (route >> (left | right)).apply_async(which="after_branches", tag=tag)
    with pytest.raises(RunFailed) as info:
        run.get(timeout=20)
    assert info.value.node_id == "route"
    assert "chose ['after_branches']" in info.value.exc_message
    assert "successors: left, right" in info.value.exc_message


def test_a_redelivered_branch_node_repeats_its_stored_choice(app):
    state = state_for(app)
    spec = (route >> (left | right) >> after_branches).compile()
    run_id = uuid.uuid4().hex
    state.runs.create(run_id, spec, "{}")
    first = state.scripts.complete(spec, run_id, spec.nodes["route"], '"x"', branch="!left")
    assert (first.publish, first.skipped) == (["left"], ["right"])
    # redelivered: the result is stored, no choice is passed; the stored one is used
    again = state.scripts.complete(spec, run_id, spec.nodes["route"], '"x"')
    assert (again.stored, again.publish, again.skipped) == (0, [], ["right"])
    # a concurrent duplicate that chose otherwise does not change the stored choice
    other = state.scripts.complete(spec, run_id, spec.nodes["route"], '"y"', branch="!right")
    assert (other.publish, other.skipped) == ([], ["right"])


def test_a_plain_result_pins_the_choice_so_a_branching_copy_cannot_arrive_twice(app):
    """One copy of route returns a plain value (every successor), a copy of the same
    message returns branch() (none): the join counts route once, as the first copy chose."""
    state = state_for(app)
    spec = ((route | left) >> after_branches).compile()
    run_id = uuid.uuid4().hex
    state.runs.create(run_id, spec, "{}")
    node = spec.nodes
    plain = state.scripts.complete(spec, run_id, node["route"], '"x"')
    assert (plain.publish, plain.skipped) == ([], [])
    copy = state.scripts.complete(spec, run_id, node["route"], '"y"', branch="!")
    assert (copy.stored, copy.publish, copy.skipped) == (0, [], [])
    join = state.client.hgetall(state.keys.join(run_id, "after_branches"))
    assert join == {b"route": b"1", b"#n": b"1", b"#real": b"1"}
    released = state.scripts.complete(spec, run_id, node["left"], '"l"')
    assert released.publish == ["after_branches"]
