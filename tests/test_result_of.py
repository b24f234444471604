"""result_of(node): a bound value that is an upstream node's result, whatever the
parameter's name. The compiler turns it into a pull (parameter -> node id): checked
before anything is sent, carried as an id, filled by the worker like a named upstream."""

from __future__ import annotations

import threading

import pytest

from celery_graph import (
    GraphDefinitionError,
    MissingParameterError,
    Parallel,
    result_of,
    workflow,
)
from celery_graph.keys import Keys
from celery_graph.protocol import GRAPH_KWARG
from tests.tasks import (
    add,
    big_result,
    double,
    extras,
    labelled,
    left,
    measure,
    process,
    report,
    right,
    route,
    source,
    split,
    step,
)


@pytest.fixture()
def no_publish(app, published, rclient):
    """Asserts that the test published nothing and created no run. Only the test's own
    thread counts: the session worker may still be finishing an earlier test's run."""
    keys = Keys(app.conf.graph_key_prefix)
    before = rclient.zcard(keys.runs_index())
    test_thread = threading.get_ident()
    yield
    mine = [m["task"] for m in published if m["thread"] == test_thread]
    assert mine == [], f"messages were published: {mine}"
    assert rclient.zcard(keys.runs_index()) == before, "a run record was created"


# -- compiled: a pull, never a value ----------------------------------------------------


def test_result_of_compiles_to_a_pull_and_not_a_bound_value():
    flow = source.bind(value=7) >> report.bind(summary=result_of(source), title="daily")
    node = flow.compile().nodes["report"]
    assert node.pull == {"summary": "source"}
    assert node.kwargs == {"title": "daily"}
    assert node.needs == ()  # a required parameter that result_of fills is filled
    assert repr(result_of(source)) == "result_of('source')"
    assert "summary=result_of('source')" in repr(report.bind(summary=result_of("source")))


def test_result_of_takes_a_node_an_id_or_a_named_group():
    assert result_of(source) == result_of("source")
    assert result_of(source.bind(id="s2")) == result_of("s2")
    assert result_of((source | step).named("batch")) == result_of("batch")
    with pytest.raises(GraphDefinitionError, match="a group needs a name"):
        result_of(source | step)
    with pytest.raises(GraphDefinitionError, match="result_of"):
        result_of(source >> step)  # type: ignore[arg-type]
    with pytest.raises(GraphDefinitionError, match="invalid node id 'no such'"):
        result_of("no such")


# -- refused before anything is sent ------------------------------------------------------


def test_result_of_a_node_that_is_not_upstream_is_refused(no_publish):
    flow = source | report.bind(summary=result_of(source))
    with pytest.raises(GraphDefinitionError) as info:
        flow.apply_async()
    message = str(info.value)
    assert "'report'" in message and "'summary'" in message and "'source'" in message
    assert "not upstream" in message


def test_result_of_a_downstream_node_is_refused(no_publish):
    flow = report.bind(summary=result_of(source)) >> source
    with pytest.raises(GraphDefinitionError, match=r"'source' is not upstream of 'report'"):
        flow.apply_async()


def test_result_of_an_unknown_id_is_refused(no_publish):
    flow = source >> report.bind(summary=result_of("sourse"))
    with pytest.raises(
        GraphDefinitionError, match=r"'report'.*'summary'.*no node or named group 'sourse'"
    ):
        flow.apply_async()


def test_result_of_a_group_not_upstream_is_refused(no_publish):
    group = (source.bind(id="s1") | source.bind(id="s2")).named("batch")
    flow = group | report.bind(summary=result_of(group))
    with pytest.raises(GraphDefinitionError, match="group 'batch' is not upstream of 'report'"):
        flow.apply_async()


def test_result_of_its_own_result_is_refused(no_publish):
    flow = source >> report.bind(summary=result_of("report"))
    with pytest.raises(GraphDefinitionError, match="its own result"):
        flow.apply_async()


def test_result_of_in_a_workflow_that_lacks_the_edge_is_refused(no_publish):
    with workflow("reports") as wf:
        source >> step
        wf.add(report.bind(summary=result_of(step)))
    with pytest.raises(GraphDefinitionError, match="'step' is not upstream of 'report'"):
        wf.apply_async()


def test_result_of_on_the_parameter_a_map_fills_is_refused(no_publish):
    flow = (split | source) >> labelled.bind(item=result_of(source), label="x").map(
        "split", param="item"
    )
    with pytest.raises(GraphDefinitionError, match=r"'item' receives the items of map\('split'\)"):
        flow.apply_async()


def test_result_of_bound_to_a_name_that_is_no_parameter_is_refused():
    with pytest.raises(GraphDefinitionError, match="'summry', which is not a parameter"):
        report.bind(summry=result_of(source))


def test_a_required_parameter_without_result_of_is_still_missing(no_publish):
    with pytest.raises(MissingParameterError, match="'summary'"):
        (source >> report).apply_async()


def test_result_of_on_a_bare_task_call_is_refused_before_sending(app, published):
    with pytest.raises(GraphDefinitionError, match=r"summary=result_of\('source'\).*graph run"):
        report.bind(summary=result_of(source)).delay()
    assert published == []


# -- runs on a real worker ------------------------------------------------------------------


def test_result_of_feeds_a_parameter_of_another_name(eager_off, published):
    flow = big_result.bind(size=5000) >> measure.bind(text=result_of(big_result))
    assert flow.apply_async().get(timeout=20) == 5000
    (msg,) = [m for m in published if m["body"][1][GRAPH_KWARG]["n"] == "measure"]
    # invariant 1: the message names the upstream node; the value stays in the state
    assert "text" not in msg["body"][1]
    assert msg["size"] < 2048


def test_result_of_an_indirect_upstream_node(app):
    flow = source.bind(value=3) >> step >> report.bind(summary=result_of(source))
    assert flow.apply_async().get(timeout=20) == {"title": "report", "summary": 3}


def test_result_of_wins_over_run_inputs_and_defaults(app):
    flow = source.bind(value=5) >> report.bind(summary=result_of(source), title=result_of(source))
    run = flow.apply_async(summary="from the input", title="from the input")
    assert run.get(timeout=20) == {"title": 5, "summary": 5}


def test_result_of_wins_over_an_upstream_node_named_like_the_parameter(app):
    flow = (add.bind(x=1) | source.bind(value=50)) >> double.bind(add=result_of(source))
    assert flow.apply_async().get(timeout=20) == 100  # not 2: add's result is not used


def test_result_of_nodes_used_twice_with_their_own_ids(app):
    a, b = source.bind(id="a", value=1), source.bind(id="b", value=2)
    flow = (a | b) >> report.bind(summary=result_of(b), title=result_of("a"))
    assert flow.apply_async().get(timeout=20) == {"title": 1, "summary": 2}


def test_result_of_a_named_group_is_the_list_of_its_members(app):
    group = Parallel((source.bind(id="s1", value=1), source.bind(id="s2", value=2)))
    batch = group.named("batch")
    flow = batch >> (
        report.bind(id="by_value", summary=result_of(batch))
        | report.bind(id="by_name", summary=result_of("batch"))
    )
    expected = {"title": "report", "summary": [1, 2]}
    assert flow.apply_async().get(timeout=20) == {"by_value": expected, "by_name": expected}


def test_result_of_a_map_node_is_the_list_of_item_results(app):
    flow = split.bind(n=3) >> process.map("split") >> report.bind(summary=result_of(process))
    result = flow.apply_async().get(timeout=20)
    assert result == {"title": "report", "summary": ["ITEM0", "ITEM1", "ITEM2"]}


def test_result_of_reaches_every_item_of_a_map(app, published):
    label = source.bind(id="label", value="L")
    flow = (split.bind(n=2) | label) >> labelled.bind(label=result_of(label)).map(
        "split", param="item"
    )
    assert flow.apply_async().get(timeout=20) == ["L:item0", "L:item1"]
    items = [m for m in published if m["body"][1][GRAPH_KWARG]["n"] == "labelled"]
    assert items and all("label" not in m["body"][1] for m in items)


def test_result_of_a_skipped_branch_is_none(app):
    flow = (
        route.bind(which="left")
        >> (left | right)
        >> report.bind(summary=result_of(right), title=result_of(route))
    )
    assert flow.apply_async().get(timeout=20) == {"title": "routed:left", "summary": None}


def test_result_of_inside_a_workflow_block(app):
    with workflow("reports") as wf:
        seed = source.bind(value=9)
        seed >> step
        step >> report.bind(summary=result_of(seed), title="wf")
    assert wf.apply_async().get(timeout=20) == {"title": "wf", "summary": 9}


def test_result_of_into_var_keyword_parameters(app):
    flow = source.bind(value=4) >> extras.bind(got=result_of(source), fixed=1)
    assert flow.apply_async().get(timeout=20) == {"got": 4, "fixed": 1}
