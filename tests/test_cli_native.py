"""The CLI as a Celery user meets it: the real ``celery`` executable with the ``workflow``
sub-command (installed through the ``celery.commands`` entry point), ``--json`` parsed,
a closed pipe through a real shell, click's shell completion, and ``status`` on a run too
large to list node by node. A real ``celery worker`` subprocess on a private Redis."""

from __future__ import annotations

import functools
import io
import json
import operator
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from celery_graph.cli.output import SUMMARY_OVER, print_status
from celery_graph.drawing import render
from celery_graph.model import NodeStatus, RunStatus
from tests.support import ROOT
from tests.support.helpers import starts_processes
from tests.support.processes import base_env, celery_worker, cli, redis_db_url
from tests.tasks import audit, boom, extract, load, step, transform

# The app of `celery -A tests.test_cli_native:worker_app ...`. Its key prefix is its own
# setting (app config wins over the environment), so a command that finds the runs below
# proves it worked on the app Celery's `-A` named.
worker_app = Celery("cgnative", set_as_current=False)
worker_app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    graph_key_prefix=os.environ.get("CGNATIVE_PREFIX", "cgnative:unset"),
)
APP = "tests.test_cli_native:worker_app"

ETL = extract >> (transform | audit) >> load
# more nodes than `status` lists by default, one of which fails the run
WIDE = (
    functools.reduce(
        operator.or_, [step.bind(id=f"s{i:02d}", name=f"s{i:02d}") for i in range(SUMMARY_OVER + 9)]
    )
    | boom
)
# a graph whose drawing is larger than a pipe's buffer
BIG = extract >> functools.reduce(
    operator.or_, [step.bind(id=f"n{i:04d}", name=f"n{i}") for i in range(3000)]
)

CELERY = str(Path(sys.executable).with_name("celery"))
CELERY_GRAPH = str(Path(sys.executable).with_name("celery-graph"))


def run(args: list[str], env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def celery(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``celery -A APP workflow ARGS`` through the installed ``celery`` script."""
    return run([CELERY, "-A", APP, "workflow", *args], env)


@pytest.fixture(scope="module")
@starts_processes
def env(redis_url: str) -> Iterator[dict[str, str]]:
    url = redis_db_url(redis_url, 9)
    prefix = f"cgnative:{os.getpid()}:{time.monotonic_ns() % 10**6}"
    environment = base_env(url, CELERY_BROKER_URL=url, CGNATIVE_PREFIX=prefix)
    with celery_worker(APP, environment) as proc:
        yield environment
        assert proc.poll() is None, "the worker died during the tests"


def test_the_celery_command_lists_workflow_and_its_commands() -> None:
    env = base_env("redis://127.0.0.1:1/0")
    top = run([CELERY, "--help"], env)
    assert top.returncode == 0, top.stderr
    assert re.search(r"^\s+workflow\s", top.stdout, re.M), top.stdout
    sub = run([CELERY, "workflow", "--help"], env)
    assert sub.returncode == 0, sub.stderr
    for command in ("run", "status", "runs", "cancel", "resume", "workers", "show", "ui"):
        assert re.search(rf"^\s+{command}\s", sub.stdout, re.M), sub.stdout
    status = run([CELERY, "workflow", "status", "--help"], env)
    assert "Usage: celery workflow status [OPTIONS] RUN_ID" in status.stdout
    assert "--app" not in status.stdout  # the app is Celery's own -A


@pytest.mark.timeout(300)  # a dozen commands one after another: 73 s on a loaded machine
def test_celery_workflow_runs_a_flow_on_celerys_app_and_reads_it_back(env) -> None:
    done = celery("run", "tests.test_cli_native:ETL", "-i", "n=2", "--wait", "--json", env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["state"] == "succeeded"
    assert result["result"] == {"rows": [10, 20], "count": 2}
    run_id = result["run_id"]

    runs = celery("runs", "--json", env=env)
    assert runs.returncode == 0, runs.stderr
    listed = {r["run_id"]: r for r in json.loads(runs.stdout)}
    assert listed[run_id]["state"] == "succeeded"
    # an unnamed flow's runs record the MODULE:FLOW they were started as
    assert listed[run_id]["flow"] == "tests.test_cli_native:ETL"
    named = celery(
        "run", "tests.test_cli_native:ETL", "--name", "etl-nightly", "--wait", "--json", env=env
    )
    assert named.returncode == 0, named.stderr
    shown = celery("status", json.loads(named.stdout)["run_id"], "--json", env=env)
    assert json.loads(shown.stdout)["flow"] == "etl-nightly"
    assert listed[run_id]["done"] == listed[run_id]["nodes"] == 4

    table = celery("status", run_id, env=env)
    assert table.returncode == 0, table.stderr
    assert f"run       {run_id}" in table.stdout
    assert re.search(r"^load\s+succeeded\s+1\s+celery@", table.stdout, re.M)
    data = json.loads(celery("status", run_id, "--json", env=env).stdout)
    assert data["counts"] == {"succeeded": 4}

    # the run is under the app's own prefix: celery-graph finds it with -A, not without
    assert run_id in cli("-A", APP, "runs", env=env).stdout
    assert run_id not in cli("runs", env=env).stdout


def test_json_documents_of_show_workers_and_reconcile(env) -> None:
    shown = celery("show", "tests.test_cli_native:ETL", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    graph = json.loads(shown.stdout)
    assert graph["nodes"][0]["id"] == "extract"
    assert ["transform", "load"] in graph["edges"] and graph["sinks"] == ["load"]

    workers = celery("workers", "--json", env=env)
    assert workers.returncode == 0, workers.stderr
    assert isinstance(json.loads(workers.stdout), list)

    swept = celery("reconcile", "--once", "--json", env=env)
    assert swept.returncode == 0, swept.stderr
    report = json.loads(swept.stdout)
    assert {"runs", "redelivered", "failed", "locked_out"} <= set(report)


def test_bad_input_under_celery_is_one_line_and_exit_2(env) -> None:
    out = celery("status", "not-a-run", env=env)
    assert out.returncode == 2
    assert out.stderr.strip() == "celery-graph: error: 'not-a-run' is not a run id (32 hex digits)"
    unknown = cli("runs", "--no-such-option", env=env)
    assert unknown.returncode == 2
    assert unknown.stderr == "celery-graph: error: No such option: --no-such-option\n" or (
        unknown.stderr.startswith("celery-graph: error: No such option")
        and len(unknown.stderr.splitlines()) == 1
    )


def test_status_summarises_a_large_run_and_all_lists_every_node(env) -> None:
    failed = cli(
        "-A",
        APP,
        "run",
        "tests.test_cli_native:WIDE",
        "--wait",
        "--timeout",
        "60",
        "--json",
        env=env,
    )
    assert failed.returncode == 1, failed.stderr
    document = json.loads(failed.stdout)
    assert document["state"] == "failed"
    assert document["error"] == {
        "node": "boom",
        "type": "ValueError",
        "message": "boom went the node",
    }
    run_id = document["run_id"]
    assert f"run {run_id} failed: node 'boom' raised ValueError" in failed.stderr

    summary = cli("-A", APP, "status", run_id, env=env)
    assert summary.returncode == 0, summary.stderr
    text = summary.stdout
    # a run of more than SUMMARY_OVER nodes: the counts the graph state keeps, no node read
    assert re.search(r"^nodes\s+1 failed, \d+ ", text, re.M)
    assert f"{SUMMARY_OVER + 10} nodes, counted by state" in text
    assert "error: node 'boom': ValueError: boom went the node" in text
    rows = [line for line in text.splitlines() if re.match(r"s\d\d\s", line)]
    assert rows == []  # no node listed

    every = cli("-A", APP, "status", run_id, "--all", env=env)
    assert every.returncode == 0, every.stderr
    listed = {line.split()[0] for line in every.stdout.splitlines() if re.match(r"s\d\d\s", line)}
    assert listed == {f"s{i:02d}" for i in range(SUMMARY_OVER + 9)}
    assert re.search(r"^boom\s+failed\s+1\s", every.stdout, re.M)


def test_summary_of_a_100000_node_run_is_short_and_fast() -> None:
    now = 1_700_000_000.0
    nodes = {
        f"n{i}": NodeStatus("succeeded", 1, "w@h", now - 100 + i % 50, now - 50 + i % 7)
        for i in range(100_000)
    }
    nodes["n5"] = NodeStatus("failed", 3, "w@h", now - 10, now - 9)
    nodes["n6"] = NodeStatus("queued", 0, queued=now - 30)
    status = RunStatus("0" * 32, "running", "g", now - 200, None, nodes, now=now)
    out = io.StringIO()
    print_status(status, out)
    lines = out.getvalue().splitlines()
    assert len(lines) < 60, out.getvalue()
    assert "nodes     1 failed, 1 queued, 99998 succeeded" in lines
    assert any(line.startswith("n6 ") and "queued 30s" in line for line in lines)


@pytest.mark.timeout(300)  # four commands drawing 3,000 nodes: 61 s on a loaded machine
def test_a_closed_pipe_ends_quietly() -> None:
    # `true` closes the pipe before the command writes: every write fails with EPIPE
    env = base_env("redis://127.0.0.1:1/0")
    for command in (
        f"{CELERY_GRAPH} show tests.test_cli_native:BIG --format dot",
        f"{CELERY} workflow show tests.test_cli_native:BIG --format dot",
    ):
        out = run(["bash", "-c", command + " | true; echo ${PIPESTATUS[0]}"], env)
        assert out.stderr == "", (command, out.stderr)
        assert out.stdout == "1\n"  # quiet, and not a success either
        head = run(["bash", "-c", command + " | head -1"], env)
        assert head.stderr == "" and head.stdout.startswith("digraph ")


def test_runs_piped_into_head(env) -> None:
    assert cli("-A", APP, "run", "tests.test_cli_native:ETL", env=env).returncode == 0
    out = run(["bash", "-c", f"{CELERY_GRAPH} -A {APP} runs | head -1"], env)
    assert out.stderr == ""
    assert out.stdout.split()[:3] == ["RUN", "ID", "STATE"]


def test_shell_completion_script_and_run_ids(env) -> None:
    script = run([CELERY_GRAPH], dict(env, _CELERY_GRAPH_COMPLETE="bash_source"))
    assert script.returncode == 0, script.stderr
    assert "complete -o nosort -F _celery_graph_completion celery-graph" in script.stdout

    run_id = cli("-A", APP, "run", "tests.test_cli_native:ETL", env=env).stdout.strip()
    words = dict(
        env,
        _CELERY_GRAPH_COMPLETE="bash_complete",
        COMP_WORDS=f"celery-graph -A {APP} status {run_id[:6]}",
        COMP_CWORD="4",
    )
    completed = run([CELERY_GRAPH], words)
    assert completed.returncode == 0, completed.stderr
    assert f"plain,{run_id}" in completed.stdout.splitlines()
    # the same through Celery's own completion, the app from Celery's -A
    words = dict(
        env,
        _CELERY_COMPLETE="bash_complete",
        COMP_WORDS=f"celery -A {APP} workflow status {run_id[:6]}",
        COMP_CWORD="5",
    )
    completed = run([CELERY], words)
    assert completed.returncode == 0, completed.stderr
    assert f"plain,{run_id}" in completed.stdout.splitlines()


def test_show_writes_a_picture_with_out(env, tmp_path) -> None:
    svg = tmp_path / "etl.svg"
    out = cli("show", "tests.test_cli_native:ETL", "--out", str(svg), env=env)
    if hasattr(render, "save"):  # SVG written directly
        assert out.returncode == 0, out.stderr
        assert "<svg" in svg.read_text()[:500]
    else:  # before it: PNG only, said in one line
        assert out.returncode == 2
        message = f"{svg}: this version writes pictures as .png only"
        assert out.stderr == f"celery-graph: error: {message}\n"
    both = cli("show", "tests.test_cli_native:ETL", "--out", "a.svg", "--png", "b.png", env=env)
    assert both.returncode == 2
    assert "--out and --png name the same picture" in both.stderr
