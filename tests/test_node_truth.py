"""Node states that tell the truth and the history of every attempt, as ``status``,
``status --json``, ``status --all`` and the dashboard's API show them; a real in-process
worker, the session's Redis and the dashboard's real server."""

from __future__ import annotations

import json

import pytest

from celery_graph import GraphRun
from celery_graph.cli import main
from celery_graph.errors import CorruptRecord
from celery_graph.model import RunStatus
from celery_graph.state import state_for
from tests.support.helpers import wait_for
from tests.tasks import flaky, step
from tests.ui_tasks import gated, ui_boom, ui_echo, ui_fail_once

pytest_plugins = ("tests.support.ui_fixtures",)  # fixtures: ui, http, gates

ENTRY = {"worker", "queued", "started", "finished", "outcome", "error", "traceback"}


def cli_status(capsys, run_id: str, *args: str) -> str:
    capsys.readouterr()
    assert main(["status", run_id, *args]) == 0
    return capsys.readouterr().out


def test_nodes_a_failure_leaves_unrun_are_upstream_failed_everywhere(app, http, capsys, tag):
    run = (ui_boom >> ui_echo.bind(x=1) >> step.bind(tag=tag)).apply_async()
    wait_for(lambda: run.status().done, 20, "the run to fail")
    status = run.status()
    assert status.state == "failed"
    assert {n: s.state for n, s in status.nodes.items()} == {
        "ui_boom": "failed",
        "ui_echo": "upstream_failed",
        "step": "upstream_failed",
    }
    assert status.counts() == {"failed": 1, "upstream_failed": 2}
    data = json.loads(cli_status(capsys, run.id, "--json"))
    assert data["nodes"]["step"]["state"] == "upstream_failed"
    assert data["counts"] == {"failed": 1, "upstream_failed": 2}
    table = cli_status(capsys, run.id)
    assert "nodes     1 failed, 2 upstream_failed" in table
    api = http.get(f"/api/runs/{run.id}")
    assert api["nodes"]["ui_echo"]["state"] == "upstream_failed"
    assert http.get(f"/api/runs/{run.id}/nodes/step")["state"] == "upstream_failed"


def test_unfinished_nodes_of_a_cancelled_run_are_cancelled_and_resume_restores_them(
    app, http, gates, tag
):
    run = gated(tag).apply_async()
    wait_for(lambda: run.status().nodes["g1"].state == "running", 20, "g1 running")
    assert run.cancel()
    status = run.status()
    assert status.state == "cancelled"
    assert {s.state for s in status.nodes.values()} == {"cancelled"}, status.nodes
    api = http.get(f"/api/runs/{run.id}")
    assert (
        api["nodes"]["g1"]["state"] == "cancelled" and api["nodes"]["done"]["state"] == "cancelled"
    )
    run.resume()
    assert run.status().nodes["g1"].state in ("running", "queued")  # what it was, again
    gates.release(2)
    assert run.get(timeout=30) == {"x": 2, "times": 4}


def test_history_keeps_every_attempt_of_a_retried_node(app, http, capsys, tag):
    run = flaky.bind(tag=tag, fail_times=2).as_graph().apply_async()
    assert run.get(timeout=30) == 3
    # a retry may begin, and even finish the run, before the worker of the attempt it
    # follows has said why that one ended
    node = wait_for(
        lambda: (n := run.status().nodes["flaky"]) and all(a["error"] for a in n.history[:2]) and n,
        10,
        "both retried attempts to carry their errors",
    )
    assert node.attempts == 3
    assert [a["outcome"] for a in node.history] == ["retried", "retried", "succeeded"]
    for a in node.history:
        assert set(a) == ENTRY
        assert a["worker"] and a["started"] and a["finished"] >= a["started"]
        assert a["queued"] is None or a["queued"] <= a["started"]  # Celery sends retries
    first, second, last = node.history
    assert first["error"] == {"type": "ConnectionError", "message": "transient failure 1"}
    assert second["error"]["message"] == "transient failure 2"
    assert "ConnectionError: transient failure 1" in first["traceback"]
    assert last["error"] is None and last["traceback"] is None
    assert first["finished"] <= second["started"]

    data = json.loads(cli_status(capsys, run.id, "--json"))
    assert data["nodes"]["flaky"]["attempts"] == 3
    assert [a["outcome"] for a in data["nodes"]["flaky"]["history"]] == [
        "retried",
        "retried",
        "succeeded",
    ]
    table = cli_status(capsys, run.id, "--all")
    lines = table[table.index("attempts:") :].splitlines()
    assert lines[1].split()[:3] == ["NODE", "ATTEMPT", "OUTCOME"]
    assert [line.split()[:3] for line in lines[2:]] == [
        ["flaky", "1", "retried"],
        ["flaky", "2", "retried"],
        ["flaky", "3", "succeeded"],
    ]
    assert "ConnectionError: transient failure 1" in lines[2]
    assert "attempts:" not in cli_status(capsys, run.id)  # only with --all
    api = http.get(f"/api/runs/{run.id}/nodes/flaky")
    assert [a["outcome"] for a in api["history"]] == ["retried", "retried", "succeeded"]
    assert http.get(f"/api/runs/{run.id}")["nodes"]["flaky"]["history"] == api["history"]


def test_retry_this_node_keeps_the_failed_attempt_with_its_error(app, http, tag):
    run = (ui_fail_once.bind(key=tag) >> ui_echo.bind(x=3)).apply_async()
    wait_for(lambda: run.status().done, 20, "the run to fail")
    failed = http.get(f"/api/runs/{run.id}/nodes/ui_fail_once")
    assert [a["outcome"] for a in failed["history"]] == ["failed"]
    assert failed["history"][0]["error"]["type"] == "RuntimeError"
    assert "Traceback" in failed["history"][0]["traceback"]
    http.post(f"/api/runs/{run.id}/nodes/ui_fail_once/retry")
    assert run.get(timeout=20) == {"x": 3, "times": 6}
    node = http.get(f"/api/runs/{run.id}/nodes/ui_fail_once")
    assert node["attempts"] == 2 and node["state"] == "succeeded"
    assert [a["outcome"] for a in node["history"]] == ["failed", "succeeded"]
    assert node["history"][0] == failed["history"][0]  # the previous error is kept
    assert node["history"][1]["started"] >= node["history"][0]["finished"]
    echo = http.get(f"/api/runs/{run.id}/nodes/ui_echo")["history"]
    assert len(echo) == 1 and echo[0]["queued"] <= echo[0]["started"]  # sent by the run


def test_a_corrupt_history_entry_is_named() -> None:
    record = {"status": "running", "graph": "g", "created": "1.0"}
    fields = {"a:state": "running", "a:run": "1|2.0||w", "a:history:1": "{not json"}
    with pytest.raises(CorruptRecord, match=r"run r1: a node's attempt history does not parse"):
        RunStatus.from_state("r1", record, fields, ("a",))


def test_history_survives_for_the_runs_lifetime(app, tag) -> None:
    run = flaky.bind(tag=tag, fail_times=1).as_graph().apply_async()
    assert run.get(timeout=30) == 2
    again = wait_for(
        lambda: (n := GraphRun(run.id, app=app).status().nodes["flaky"]).history[0]["error"] and n,
        10,
        "the retried attempt's error",
    )
    assert [a["outcome"] for a in again.history] == ["retried", "succeeded"]
    state = state_for(app)
    ttl = state.client.ttl(state.keys.nodes(run.id))
    assert 0 < ttl <= state.settings.run_ttl  # kept with the node state, expires with it
