"""O(1) run status: the counts by state the scripts keep (state/lua/lib/counts.lua) equal a
full recount of the node states through retries, failures and resumes, cancels, maps,
branches and a reconciler's re-send, with the real in-process worker; a summary reads
them and no node. (conftest.py also checks every run of every test that uses the test
Redis: tests/counts_check.py.)"""

from __future__ import annotations

import re
from importlib import resources

import pytest

from celery_graph import GraphRun, Parallel, RunFailed
from celery_graph.model import NODE_STATES, recount
from celery_graph.state import state_for
from tests.support.counts import mismatch
from tests.support.helpers import wait_for
from tests.tasks import (
    boom,
    fails_then_ok,
    flaky,
    left,
    merge,
    process,
    read_trace,
    right,
    route,
    slow,
    split,
    step,
    unconsumed,
)

LUA = resources.files("celery_graph.state") / "lua"


def _scripts() -> dict[str, str]:
    out = {f"lib/{p.name}": p.read_text() for p in (LUA / "lib").iterdir()}
    out.update({p.name: p.read_text() for p in LUA.iterdir() if p.name.endswith(".lua")})
    return out


# scripts that set the state of the steps after the graph only: not counted
STEPS_ONLY = {"after.lua", "lib/run.lua", "lib/counts.lua"}


def test_every_state_a_script_sets_is_one_the_summary_reads():
    written = set()
    for text in _scripts().values():
        written.update(re.findall(r"':state', '([a-z_]+)'", text))
        written.update(re.findall(r"set_state\([^,]+, [^,]+, '([a-z_]+)'", text))
        written.update(re.findall(r"count_move\([^,]+, [^,]+, '([a-z_]+)'\)", text))
    assert written, "no state write found: the patterns above are out of date"
    assert written <= set(NODE_STATES), written - set(NODE_STATES)


def test_every_script_that_sets_a_node_state_counts_it():
    for name, text in _scripts().items():
        if name in STEPS_ONLY or "':state'" not in text:
            continue
        writes = re.search(r"HSET', K\.nodes, [^)]*':state'", text) or "set_state(" in text
        if writes:
            assert '-- @include "counts"' in text, f"{name} sets a state and counts nothing"


def _exact(app, run: GraphRun) -> dict[str, int]:
    """The kept counts, checked against a recount read in the same MULTI; and the
    summary's counts against the full status's."""
    client = state_for(app).client
    problem = mismatch(client, state_for(app).keys.nodes(run.id))
    assert problem is None, problem
    summary = run.summary()
    assert summary.nodes == {} and summary.summary
    full = run.status()
    if full.state == summary.state:  # (nothing moved between the two reads)
        assert summary.counts() == recount(full.nodes) == full.counts()
        assert summary.total == len(full.nodes)
    return summary.counts()


def test_a_sequence_counts_queued_running_and_succeeded(app, tag):
    run = (step.bind(id="a", tag=tag) >> step.bind(id="b", tag=tag)).apply_async()
    run.get(timeout=20)
    assert _exact(app, run) == {"succeeded": 2}


def test_retries_are_counted_once(app, tag):
    run = (flaky >> step.bind(name="after")).apply_async(tag=tag)
    assert run.get(timeout=30) == "after"
    assert _exact(app, run) == {"succeeded": 2}


def test_a_failure_then_a_resume(app, tag):
    run = (step.bind(id="a", tag=tag) >> fails_then_ok.bind(tag=tag, fail_times=1)).apply_async()
    with pytest.raises(RunFailed):
        run.get(timeout=20)
    assert _exact(app, run) == {"succeeded": 1, "failed": 1}
    run.resume()
    run.get(timeout=20)
    assert _exact(app, run) == {"succeeded": 2}


def test_a_cancel_while_running_then_a_resume(app, tag):
    flow = slow.bind(tag=tag, delay=1.0) >> step.bind(id="after", name="after", tag=tag)
    run = flow.apply_async()
    wait_for(lambda: "start:slow" in read_trace(tag), timeout=20, what="slow to start")
    assert run.cancel()
    counts = _exact(app, run)
    # slow runs on in the cancelled run, after is left unrun: both show as cancelled
    assert counts == {"cancelled": 2}
    # slow ends into the cancelled run: its state moves, and so do the counts
    wait_for(lambda: "slow" in run.results(), timeout=20, what="slow to store its result")
    assert _exact(app, run) == {"succeeded": 1, "cancelled": 1}
    run.resume()
    assert run.get(timeout=20) == "after"
    assert _exact(app, run) == {"succeeded": 2}


def test_a_map_counts_its_node_not_its_items(app, tag):
    run = (split >> process.map("split") >> merge).apply_async(n=7, tag=tag)
    run.get(timeout=30)
    assert _exact(app, run) == {"succeeded": 3}


def test_a_branch_not_taken_is_counted_skipped(app, tag):
    run = (route.bind(tag=tag) >> (left.bind(tag=tag) | right.bind(tag=tag))).apply_async(
        which="left"
    )
    run.get(timeout=20)
    assert _exact(app, run) == {"succeeded": 2, "skipped": 1}


def test_a_failure_and_nodes_never_started(app, tag):
    flow = Parallel((boom.bind(tag=tag), unconsumed)) >> step.bind(id="end", tag=tag)
    run = flow.apply_async()
    with pytest.raises(RunFailed):
        run.get(timeout=20)
    # unconsumed (queued) and end (pending) are left unrun by the failed run
    assert _exact(app, run) == {"failed": 1, "upstream_failed": 2}


def test_a_summary_of_a_large_run_reads_no_node(app, tag):
    n = 3000
    flow = step.bind(id="first", tag=tag) >> Parallel(
        tuple(unconsumed.bind(id=f"u{i}") for i in range(n))
    )
    run = flow.apply_async()
    try:
        wait_for(
            lambda: run.summary().counts().get("queued") == n,
            timeout=60,
            what="the fan-out to be released",
        )
        summary = run.summary()
        assert summary.total == n + 1 and summary.nodes == {}
        assert summary.counts() == {"succeeded": 1, "queued": n}
        assert _exact(app, run) == {"succeeded": 1, "queued": n}
    finally:
        run.cancel()


def test_a_run_started_without_counts_is_read_whole(app, tag):
    """A run a version that kept no counts started (its record has no "counted"): its
    summary is a full read, not counts that began mid-run."""
    run = (step.bind(id="a", tag=tag) >> step.bind(id="b", tag=tag)).apply_async()
    run.get(timeout=20)
    state = state_for(app)
    state.client.hdel(state.keys.run(run.id), "counted")
    summary = run.summary()
    assert not summary.summary and set(summary.nodes) == {"a", "b"}
    assert summary.counts() == {"succeeded": 2}


def test_a_node_status_reads_no_field_node_attrs_leaves_out():
    """The dashboard reads a node's fields by name (model NODE_ATTRS): every field
    NodeStatus.from_fields reads must be named there."""
    import inspect

    from celery_graph.model import NODE_ATTRS, NodeStatus

    read = set(re.findall(r'\{node_id\}:([a-z_]+)"', inspect.getsource(NodeStatus.from_fields)))
    assert read and read <= set(NODE_ATTRS), read - set(NODE_ATTRS)


def test_the_runs_listing_counts_done_nodes_exactly(app, tag):
    """The runs page's "done" comes from the kept counts: a failed run's nodes that
    succeeded, not its stored results (which a map's items inflate)."""
    flow = split >> process.map("split") >> merge >> boom.bind(tag=tag)
    run = flow.apply_async(n=7, tag=tag)
    with pytest.raises(RunFailed):
        run.get(timeout=30)
    [(row, done)] = state_for(app).index.summaries([run.id])
    assert row is not None and done == 3  # split, process (the map node), merge
