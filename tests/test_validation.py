"""Bad graphs are refused with an error naming the culprit, before any message is sent."""

from __future__ import annotations

import gc
import threading
import time

import pytest
from celery import shared_task

from celery_graph import (
    ConfigurationError,
    CycleError,
    DuplicateNodeError,
    GraphDefinitionError,
    MissingParameterError,
    NotAGraphTaskError,
    Parallel,
    SerializationError,
    UnknownInputError,
    task,
    workflow,
)
from celery_graph.keys import Keys
from tests.tasks import add, audit, collect, extract, load, needs_input, source, step, transform


@shared_task(name="tests.plain_celery_task")
def plain_celery_task():
    return 1


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


def test_cycle_is_refused(no_publish):
    with workflow("cyclic") as wf:
        step.bind(id="a") >> step.bind(id="b") >> step.bind(id="c")
        step.bind(id="c") >> step.bind(id="a")
    with pytest.raises(CycleError, match=r"'a'.*'b'.*'c'"):
        wf.apply_async()


def test_self_loop_is_refused(no_publish):
    a = step.bind(id="a")
    with pytest.raises(CycleError, match="'a' runs after itself"):
        (a >> a).apply_async()


def test_duplicate_node_id_is_refused(no_publish):
    flow = add.bind(id="x", x=1) | add.bind(id="x", x=2)
    with pytest.raises(DuplicateNodeError, match="duplicate node id 'x'"):
        flow.apply_async()


def test_same_task_twice_without_bind_is_one_node_but_other_task_same_name_is_refused(no_publish):
    # two different functions both called "extract"
    def extract(n: int = 3):
        return n

    other = task(name="tests.other_extract")(extract)
    with pytest.raises(DuplicateNodeError, match="'extract'"):
        (extract_node() | other).apply_async()


def extract_node():
    return extract


def test_group_name_clashing_with_node_id_is_refused(no_publish):
    flow = (source | step).named("source") >> collect.bind(batch=[])
    with pytest.raises(DuplicateNodeError, match="group name 'source'"):
        flow.apply_async()


def test_missing_parameter_names_node_and_parameter(no_publish):
    with pytest.raises(MissingParameterError, match=r"node 'needs_input'.*parameter 'x'"):
        (source >> needs_input).apply_async()


def test_parameter_naming_a_node_that_is_not_upstream(no_publish):
    # load needs transform and audit; audit exists but runs in parallel, not upstream
    with pytest.raises(MissingParameterError, match=r"'audit'.*not upstream of 'load'"):
        (extract >> ((transform >> load) | audit)).apply_async()


def test_bind_unknown_parameter_names_it():
    with pytest.raises(GraphDefinitionError, match=r"node 'add'.*'z'.*parameters: x, y"):
        add.bind(z=1)


def test_invalid_node_id():
    with pytest.raises(GraphDefinitionError, match="invalid node id 'a b'"):
        add.bind(id="a b")


def test_plain_celery_task_is_refused_with_a_hint():
    with pytest.raises(NotAGraphTaskError, match=r"decorate the function with @celery_graph\.task"):
        extract >> plain_celery_task
    with pytest.raises(NotAGraphTaskError, match=r"wrap it as node\(task\)"):
        extract >> plain_celery_task
    with pytest.raises(NotAGraphTaskError, match="not a celery-graph node"):
        extract | 42


def test_empty_group_is_refused():
    with pytest.raises(GraphDefinitionError, match="empty parallel group"):
        Parallel(())


def test_unencodable_bound_argument_names_node_and_type(no_publish):
    with pytest.raises(SerializationError, match=r"node 'add'.*'x' of type object"):
        add.bind(x=object()).as_graph().apply_async()


def test_unencodable_run_input_names_it(no_publish):
    with pytest.raises(SerializationError, match=r"run input 'x'.*type set"):
        needs_input.as_graph().apply_async(x={1, 2})


def test_malformed_key_prefix_is_refused(app, no_publish):
    old = app.conf.graph_key_prefix
    app.conf.graph_key_prefix = "bad {prefix}"
    try:
        with pytest.raises(ConfigurationError, match=r"malformed key prefix 'bad \{prefix\}'"):
            (extract >> audit).apply_async()
    finally:
        app.conf.graph_key_prefix = old


def test_local_call_runs_the_function():
    assert extract(n=2) == [1, 2]
    assert load([1], 1) == {"rows": [1], "count": 1}


def test_ten_thousand_node_graph_compiles_in_linear_time():
    """Compiling grows linearly with the graph: ten times the members costs well under
    a hundred times the time (a quadratic step would). Compared in one process, side by
    side, so the machine's speed cancels out, and in CPU time, so its load (time spent
    waiting for a core) does too; the best of five of each. The cyclic garbage collector
    is paused while compiling: its full passes cost more with every object alive, which
    is the interpreter's growth, not the compiler's."""

    def best(n: int) -> float:
        times = []
        for _ in range(5):  # a new flow each time: a flow caches its compiled spec
            members = [source.bind(id=f"m{i}", value=i) for i in range(n)]
            flow = step >> Parallel(tuple(members)).named("batch") >> collect
            gc.collect()
            gc.disable()
            try:
                started = time.process_time()  # CPU time: a loaded machine's waits left out
                spec = flow.compile()
                times.append(time.process_time() - started)
            finally:
                gc.enable()
        assert len(spec.nodes) == n + 2
        assert spec.joins == ("collect",)
        return min(times)

    small, big = best(1_000), best(10_000)
    assert big / small < 45, f"1,000 nodes: {small:.3f} s, 10,000 nodes: {big:.3f} s"


def test_a_run_input_no_node_takes_is_refused_before_sending():
    flow = extract >> (transform | audit) >> load
    with pytest.raises(UnknownInputError, match=r"'fctor' are a parameter of no node") as info:
        flow.apply_async(n=2, fctor=3)
    assert "factor" in str(info.value) and "n" in str(info.value)
    with pytest.raises(UnknownInputError, match="'fctor'"):
        flow.s(fctor=3)
