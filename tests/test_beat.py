"""Beat entries outlive their stored graph.

A graph's signature (``flow.s()``, the beat entry built from it) carries what rebuilds the
graph: a real Celery beat fires it after the graph key was deleted and the run succeeds.
A ``run_graph`` message that cannot start its run is recorded as a failed run with the
reason, seen by ``celery-graph runs``, ``status`` and the dashboard's API, once per
message however often it is delivered."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, chain, signature
from celery.beat import PersistentScheduler, Service

from celery_graph import GraphRun, RunFailed
from celery_graph.cli import main
from celery_graph.engine.reconcile import Reconciler, Sweep
from celery_graph.errors import (
    ConfigurationError,
    GraphDefinitionError,
    RunNotResumable,
    SignatureTooLarge,
)
from celery_graph.protocol import EMBED_LIMIT, GRAPH_KWARG, RUN_GRAPH, embed_spec
from celery_graph.signals import run_finished, run_started
from celery_graph.state import state_for
from tests import beat_flows
from tests.support.beat import (
    graph_stored,
    lose_graph,
    recorded,
    run_of,
    salted_flow,
    send_like_beat,
    started_run,
)
from tests.support.helpers import postruns, wait_for
from tests.tasks import offset, step

pytest_plugins = ("tests.support.ui_fixtures",)  # ui, http: the dashboard over the session's app


@pytest.fixture()
def beat_schedule(app: Celery) -> Iterator[dict[str, Any]]:
    """The session app's beat_schedule for one test, restored after it."""
    before = app.conf.beat_schedule
    schedule: dict[str, Any] = {}
    app.conf.beat_schedule = schedule
    try:
        yield schedule
    finally:
        app.conf.beat_schedule = before


@pytest.fixture()
def run_signals() -> Iterator[list[tuple[str, str]]]:
    """("started" | "finished", run id) for every run signal this process sends."""
    seen: list[tuple[str, str]] = []

    def started(run_id: str = "", **_: Any) -> None:
        seen.append(("started", run_id))

    def finished(run_id: str = "", **_: Any) -> None:
        seen.append(("finished", run_id))

    run_started.connect(started, weak=False)
    run_finished.connect(finished, weak=False)
    try:
        yield seen
    finally:
        run_started.disconnect(started)
        run_finished.disconnect(finished)


def run_graph_ids(published: list[dict], graph_id: str) -> list[str]:
    """Task ids of the run_graph messages published for ``graph_id``."""
    return [
        m["headers"]["id"]
        for m in published
        if m["task"] == RUN_GRAPH and (m["body"][1] or {}).get("graph") == graph_id
    ]


# -- what a signature carries -----------------------------------------------------------


def test_flow_s_carries_the_compressed_graph_json_safe_and_versioned(app):
    flow, _ = salted_flow()
    spec = flow.compile()
    sig = flow.s(x=1)
    kwargs = sig.kwargs
    assert json.loads(json.dumps(kwargs)) == kwargs  # a database row keeps it as JSON
    assert kwargs["v"] == 1 and kwargs["graph"] == spec.graph_id
    assert kwargs["inputs"] == {"x": 1} and kwargs["flow"] == flow.flow_name
    assert zlib.decompress(base64.b64decode(kwargs["spec"])) == spec.blob
    assert "ref" not in kwargs
    assert len(json.dumps(kwargs)) < 1000  # a two-node graph: a few hundred bytes


def test_a_real_beat_fires_an_entry_after_the_graph_key_was_deleted_and_the_run_succeeds(
    app, beat_schedule, published, tmp_path
):
    flow, salt = salted_flow("beat-real")
    sig = flow.s(x=5)
    # the documented beat entry (docs/scheduling.md)
    beat_schedule["beat-real"] = {"task": sig.task, "kwargs": sig.kwargs, "schedule": 0.5}
    graph_id = flow.compile().graph_id
    lose_graph(app, graph_id)
    service = Service(
        app,
        max_interval=0.2,
        schedule_filename=str(tmp_path / "beat-schedule"),
        scheduler_cls=PersistentScheduler,
    )
    thread = threading.Thread(target=service.start, name="beat", daemon=True)
    thread.start()
    try:
        (task_id, *_) = wait_for(lambda: run_graph_ids(published, graph_id), 20, "beat to fire")
    finally:
        service.stop(wait=True)
        thread.join(10)
    run = started_run(app, task_id)
    assert run.get(timeout=30) == (5 + salt) * 2
    assert run.flow_name == flow.flow_name
    assert graph_stored(app, graph_id)  # stored again, for the nodes and the next fire


def test_a_flow_ref_names_a_graph_too_large_to_embed(app):
    # 300 nodes with incompressible bound values: about 170,000 characters embedded
    big = step.bind(id="big0", name=secrets.token_urlsafe(450))
    for i in range(1, 300):
        big = big | step.bind(id=f"big{i}", name=secrets.token_urlsafe(450))
    with pytest.raises(SignatureTooLarge, match=r"over the 131072 .*flow_ref='proj.flows:nightly'"):
        big.s()
    assert len(embed_spec(big.compile().blob)) > EMBED_LIMIT
    assert not graph_stored(app, big.compile().graph_id)  # refused before anything is stored


def test_a_flow_ref_rebuilds_the_graph_when_it_is_gone(app):
    flow = beat_flows.by_ref
    sig = flow.s(flow_ref="tests.beat_flows:by_ref", x=2)
    assert sig.kwargs["ref"] == "tests.beat_flows:by_ref" and "spec" not in sig.kwargs
    graph_id = flow.compile().graph_id
    lose_graph(app, graph_id)
    run = started_run(app, send_like_beat(app, sig.kwargs))
    assert run.get(timeout=30) == (2 + beat_flows.SALT) * 2
    assert run.flow_name == "beat-by-ref"


@pytest.mark.parametrize(
    "ref, error, words",
    [
        ("tests.beat_flows:missing", ConfigurationError, "has no attribute 'missing'"),
        ("tests.no_such_module:flow", ConfigurationError, "cannot import module"),
        ("tests.beat_flows:not_a_flow", ConfigurationError, "is a int, not a celery-graph flow"),
        ("__main__:flow", ConfigurationError, "names __main__"),
        ("tests.beat_flows", ConfigurationError, "is not MODULE:FLOW"),
    ],
)
def test_a_bad_flow_ref_is_refused_before_anything_is_stored(app, ref, error, words):
    flow, _ = salted_flow()
    with pytest.raises(error, match=words):
        flow.s(flow_ref=ref)
    assert not graph_stored(app, flow.compile().graph_id)


def test_a_flow_ref_of_another_graph_is_refused(app):
    flow, _ = salted_flow()
    with pytest.raises(GraphDefinitionError, match=r"names a flow of graph .* not this flow's"):
        flow.s(flow_ref="tests.beat_flows:by_ref")


# -- a run that cannot start is a failed run --------------------------------------------


def test_an_old_entry_whose_graph_is_gone_is_a_failed_run_in_runs_status_and_the_api(
    app, http, capsys
):
    """A signature made before the graph travelled with it: only the graph id."""
    flow, _ = salted_flow("beat-old")
    spec = flow.compile()
    state_for(app).graphs.put(spec)
    lose_graph(app, spec.graph_id)
    old = {"graph": spec.graph_id, "inputs": {"x": 1}, "flow": flow.flow_name}
    run_id = run_of(send_like_beat(app, old))
    record = recorded(app, run_id)
    assert record["status"] == "failed" and record["flow"] == flow.flow_name
    with pytest.raises(RunFailed, match=r"GraphNotFound: .*carries nothing to rebuild it"):
        GraphRun(run_id, app=app).get(timeout=5)
    with pytest.raises(RunNotResumable, match=r"never started .*GraphNotFound"):
        GraphRun(run_id, app=app).resume()

    assert main(["runs", "--json", "--limit", "200"]) == 0
    rows = {r["run_id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[run_id]["state"] == "failed" and rows[run_id]["flow"] == flow.flow_name
    assert rows[run_id]["error"]["type"] == "GraphNotFound"

    assert main(["status", run_id]) == 0
    out = capsys.readouterr().out
    assert "state     failed" in out and f"graph     {spec.graph_id}" in out
    assert "error: GraphNotFound: graph " in out and "carries nothing to rebuild it" in out

    query = f"/api/runs?flow={flow.flow_name}&state=failed"
    (line,) = wait_for(lambda: http.get(query)["runs"], 10, "the run in the failed listing")
    assert line["run_id"] == run_id and line["error"]["type"] == "GraphNotFound"
    data = http.get(f"/api/runs/{run_id}")
    assert data["state"] == "failed" and data["nodes"] == {} and data["error"]["message"]
    assert data["actions"] == {"cancel": False, "resume": False}
    assert http.get(f"/api/runs/{run_id}/graph") is not None  # an empty drawing, no error

    # the reconciler looks at it once (a canvas may wait on it) and lets it go; the
    # worker's own reconciler may hold the run's continuation claim at that moment (then
    # this look leaves it to that one), so the run leaves the index within a few seconds
    state = state_for(app)
    Reconciler(app).reconcile(state, run_id, Sweep())
    wait_for(
        lambda: state.client.zscore(state.keys.running_index(), run_id) is None,
        10,
        "the failed run to leave the running index",
    )
    assert state.runs.record(run_id)["status"] == "failed"


def _kwargs_of(app: Celery, case: str) -> tuple[dict[str, Any], str, str]:
    """A run_graph message that cannot start, the error type it records, and words of its
    message."""
    flow, _ = salted_flow(f"beat-{case}")
    spec = flow.compile()
    kwargs = flow.s(x=1).kwargs
    if case == "tampered":  # the embedded spec is not the graph the message names
        other, _ = salted_flow()
        kwargs["spec"] = embed_spec(other.compile().blob)
        lose_graph(app, spec.graph_id)
        return kwargs, "GraphCorrupted", "hashes to"
    if case == "bomb":  # 65 MiB of zeros in 90 KB of text
        kwargs["spec"] = base64.b64encode(zlib.compress(bytes(65 * 1024 * 1024), 9)).decode()
        lose_graph(app, spec.graph_id)
        return kwargs, "RunNotStarted", "inflates to more than 67108864 bytes"
    if case == "not-zlib":
        kwargs["spec"] = base64.b64encode(b"not zlib").decode()
        lose_graph(app, spec.graph_id)
        return kwargs, "RunNotStarted", "does not decode"
    if case == "changed":  # the flow's code changed since the entry was made
        kwargs.pop("spec")
        kwargs["ref"] = "tests.beat_flows:by_ref"
        lose_graph(app, spec.graph_id)
        return kwargs, "FlowChanged", "now compiles to graph"
    if case == "unimportable":
        kwargs.pop("spec")
        kwargs["ref"] = "tests.no_such_module:flow"
        lose_graph(app, spec.graph_id)
        return kwargs, "ConfigurationError", "cannot import module 'tests.no_such_module'"
    if case == "newer":
        kwargs["v"] = 3  # this release reads formats up to 2
        return kwargs, "RunNotStarted", "newer celery-graph"
    if case == "unknown-field":
        kwargs["overlap"] = "skip"
        return kwargs, "RunNotStarted", "unknown field(s) 'overlap'"
    if case == "unknown-input":
        kwargs["inputs"] = {"x": 1, "typo": 2}
        return kwargs, "UnknownInputError", "'typo'"
    if case == "missing-input":
        kwargs["inputs"] = {}
        return kwargs, "MissingParameterError", "required parameter 'x'"
    if case == "no-graph-id":
        kwargs["graph"] = "nope"
        return kwargs, "RunNotStarted", "'graph' must be a graph id"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "tampered",
        "bomb",
        "not-zlib",
        "changed",
        "unimportable",
        "newer",
        "unknown-field",
        "unknown-input",
        "missing-input",
        "no-graph-id",
    ],
)
def test_a_message_that_cannot_start_is_a_failed_run_naming_why(app, case):
    kwargs, error_type, words = _kwargs_of(app, case)
    run_id = run_of(send_like_beat(app, kwargs))
    record = recorded(app, run_id)
    assert record["status"] == "failed" and record["unstarted"] == "1"
    error = json.loads(record["error"])
    assert error["type"] == error_type and words in error["message"], error
    assert record["flow"] == kwargs["flow"]
    status = GraphRun(run_id, app=app).status()
    assert status.state == "failed" and status.nodes == {} and status.error == error
    state = state_for(app)
    failed = state.keys.state_runs("failed")  # listed once the recording process indexed it
    wait_for(lambda: state.client.zscore(failed, run_id) is not None, 10, "the failed index")
    assert state.client.ttl(state.keys.run(run_id)) > 0  # expires like any ended run


def test_redelivery_of_the_same_beat_message_records_once(app, run_signals):
    flow, salt = salted_flow("beat-twice")
    spec = flow.compile()
    state = state_for(app)
    good = flow.s(x=3).kwargs
    state.graphs.put(spec)
    lose_graph(app, spec.graph_id)
    bad = {"graph": spec.graph_id, "inputs": {"x": 3}, "flow": flow.flow_name}
    with postruns() as done:
        failing = send_like_beat(app, bad)
        assert done.wait(failing)
        first = recorded(app, run_of(failing))
        send_like_beat(app, bad, task_id=failing)  # the same message, delivered again
        assert done.wait(failing, times=2)
        assert state.client.hgetall(state.keys.run(run_of(failing))) == {
            k.encode(): v.encode() for k, v in first.items()
        }

        starting = send_like_beat(app, good)
        assert done.wait(starting)
        run = started_run(app, starting)
        assert run.get(timeout=30) == (3 + salt) * 2
        created = state.runs.record(run.id)["created"]
        send_like_beat(app, good, task_id=starting)
        assert done.wait(starting, times=2)
        assert state.runs.record(run.id)["created"] == created
        assert run.status().nodes["add"].attempts == 1
    listed = state.client.zrange(state.keys.flow_runs(flow.flow_name), 0, -1)
    assert sorted(listed) == sorted([run_of(failing).encode(), run.id.encode()])
    # the run signals (the metrics count runs from them) fired once for each run
    for run_id in (run_of(failing), run.id):
        assert run_signals.count(("started", run_id)) == 1
        assert run_signals.count(("finished", run_id)) == 1


def test_a_chain_whose_graph_cannot_start_fails_the_canvas(app):
    flow, _ = salted_flow("beat-chain")
    spec = flow.compile()
    state_for(app).graphs.put(spec)
    lose_graph(app, spec.graph_id)
    old = signature(RUN_GRAPH, kwargs={"graph": spec.graph_id, "inputs": {}}, app=app)
    result = chain(offset.s(1, by=0), old, offset.s()).apply_async()
    # the failure comes back through the result backend (as Exception: RunFailed is not
    # one of the exception types the backend rebuilds)
    with pytest.raises(Exception, match=r"RunFailed.*GraphNotFound: graph .* is not in the store"):
        result.get(timeout=30)


# -- invariant 1: the submission carries the graph, node messages ids only ---------------


def test_node_messages_of_a_run_started_by_run_graph_carry_ids_only(app, eager_off, published):
    names = [secrets.token_hex(100) for _ in range(40)]
    flow = step.bind(id="n0", name=names[0])
    for i in range(1, 40):
        flow = flow >> step.bind(id=f"n{i}", name=names[i])
    run = started_run(app, flow.s().apply_async().id)
    assert run.get(timeout=60) == names[-1]
    (submission,) = [m for m in published if m["task"] == RUN_GRAPH]
    nodes = [m for m in published if GRAPH_KWARG in (m["body"][1] or {})]
    assert len(nodes) == 40
    assert submission["size"] > 4000  # it carries the graph (40 nodes of 200 hex digits)
    for m in nodes:
        assert m["size"] < 1500, m  # ids and the node's own 200-digit argument only
        kwargs = m["body"][1]
        assert "spec" not in kwargs and "graph" not in kwargs
