"""A graph is a Celery signature: it composes with chain, group and chord."""

from __future__ import annotations

import pytest
from celery import chain, group

from tests.tasks import add, boom, double, incr, make_inputs, offset, step, times_two, total

FLOW = incr >> times_two  # result: (input + 1) * 2


def test_chain_runs_a_then_the_whole_graph_then_b_with_its_result(any_app):
    result = chain(offset.s(5, by=0), FLOW.s(), offset.s(by=1000)).apply_async()
    assert result.get(timeout=30) == (5 + 1) * 2 + 1000


def test_a_dict_from_the_previous_step_fills_run_inputs(any_app):
    result = chain(make_inputs.s(3), (add >> double).s(y=4)).apply_async()
    assert result.get(timeout=30) == (3 + 4) * 2


def test_graphs_inside_a_group(any_app):
    result = group(FLOW.s(input=1), FLOW.s(input=2), offset.s(1, by=1)).apply_async()
    assert result.get(timeout=30) == [4, 6, 2]


def test_graphs_inside_a_chord(any_app):
    result = chain(group(FLOW.s(input=1), FLOW.s(input=2)), total.s()).apply_async()
    assert result.get(timeout=30) == 10


def test_a_failing_graph_fails_the_canvas(any_app):
    result = chain((step >> boom).s(), offset.s()).apply_async()
    with pytest.raises(Exception, match="boom"):
        result.get(timeout=30)
