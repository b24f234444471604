"""``celery-graph`` as a user runs it: ``python -m celery_graph.cli`` subprocesses against a
private Redis and a real ``celery worker`` subprocess."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import uuid
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from celery_graph import GraphRun
from celery_graph import cli as cli_module
from tests.support.apps import new_app
from tests.support.helpers import starts_processes, wait_for
from tests.support.processes import base_env, celery_worker, cli, redis_db_url
from tests.tasks import (
    after_boom,
    audit,
    boom,
    extract,
    held,
    load,
    needs_input,
    open_gate,
    step,
    transform,
)

# The app the worker subprocess runs; its broker comes from $CELERY_BROKER_URL.
worker_app = Celery("cgcli", set_as_current=False)
worker_app.conf.update(
    task_acks_late=True, worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True
)

ETL = extract >> (transform | audit) >> load
FAILING = boom >> after_boom
HELD = held >> step  # runs until its gate opens: still running whenever the test acts
ECHO = needs_input
NOT_A_FLOW = 42

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
COMMANDS = (
    "run",
    "status",
    "runs",
    "cancel",
    "signal",
    "resume",
    "reconcile",
    "workers",
    "show",
    "ui",
)


@pytest.fixture(scope="module")
@starts_processes
def env(redis_url: str) -> Iterator[dict[str, str]]:
    url = redis_db_url(redis_url, 3)
    environment = base_env(url, CELERY_BROKER_URL=url)
    with celery_worker("tests.test_cli:worker_app", environment) as proc:
        yield environment
        assert proc.poll() is None, "the worker died during the tests"


@pytest.fixture()
def bare_env(redis_url: str) -> dict[str, str]:
    """The environment of commands that need no worker (the module's Redis database, a
    key prefix of their own): tests without the module's worker are not kept on the xdist
    process that runs it, so they spread over the others."""
    url = redis_db_url(redis_url, 3)
    return base_env(url, CELERY_BROKER_URL=url)


def one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("celery-graph: error: "), lines[0]
    return lines[0]


def wait_state(env: dict[str, str], run_id: str, states: set[str], timeout: float = 30) -> dict:
    """Wait until the run or one of its nodes is in ``states``, reading it in this process
    (a `status` command a look cost about a CPU-second, several looks a wait), then the
    run's `status --json` document, from the command."""
    app = new_app(
        "cgcli-wait",
        env.get("CELERY_BROKER_URL", env["CELERY_GRAPH_REDIS_URL"]),
        graph_redis_url=env["CELERY_GRAPH_REDIS_URL"],
        graph_key_prefix=env["CELERY_GRAPH_KEY_PREFIX"],
    )
    run = GraphRun(run_id, app=app)

    def reached() -> bool:
        status = run.status()
        return status.state in states or any(n.state in states for n in status.nodes.values())

    wait_for(reached, timeout, f"run {run_id}, or a node of it, to be one of {sorted(states)}")
    out = cli("status", run_id, "--json", env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_help_lists_commands_and_examples() -> None:
    env = base_env("redis://127.0.0.1:1/0")
    top = cli("--help", env=env)
    assert top.returncode == 0
    for command in COMMANDS:
        assert command in top.stdout
    assert "examples:" in top.stdout
    # each command's help in this process (the same click group the console script runs;
    # a process per command cost about a CPU-second each)
    from click.testing import CliRunner

    from celery_graph.cli.groups import celery_graph

    for command in COMMANDS:
        sub = CliRunner().invoke(
            celery_graph, [command, "--help"], prog_name="celery-graph", env=env
        )
        assert sub.exit_code == 0, sub.output
        assert "examples:" in sub.output
        assert re.search(rf"celery-graph (-A \S+ )?{command}", sub.output)
        for option in ("-A, --app APP", "--redis-url URL", "--key-prefix PREFIX"):
            assert option in sub.output


def test_run_wait_prints_progress_and_result(env) -> None:
    out = cli("run", "tests.test_cli:ETL", "--input", "n=4", "--wait", "--timeout", "60", env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"rows": [10, 20, 30, 40], "count": 4}
    assert "[##############################] 4/4 nodes done" in out.stderr
    assert re.search(r"run [0-9a-f]{32} succeeded", out.stderr)


def test_progress_bar_redraws_in_place_on_a_terminal(env) -> None:
    import os
    import pty
    import subprocess

    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "celery_graph.cli", "run", "tests.test_cli:ETL", "--wait"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=slave,
            timeout=60,
            check=False,
        )
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if slave != -1:
            os.close(slave)
        os.close(master)
    assert proc.returncode == 0
    shown = b"".join(chunks).decode()
    assert "\r\x1b[2K[##############################] 4/4 nodes done" in shown
    assert json.loads(proc.stdout) == {"count": 3, "rows": [10, 20, 30]}


def test_run_without_wait_prints_the_run_id_then_status_and_runs_show_it(env) -> None:
    out = cli("run", "tests.test_cli:ETL", env=env)
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip()
    assert RUN_ID.match(run_id)
    data = wait_state(env, run_id, {"succeeded"})
    assert data["state"] == "succeeded"
    assert set(data["nodes"]) == {"extract", "transform", "audit", "load"}
    assert all(n["worker"].startswith("celery@") for n in data["nodes"].values())

    table = cli("status", run_id, env=env)
    assert table.returncode == 0
    assert f"run       {run_id}" in table.stdout
    assert re.search(r"^load\s+succeeded\s+1\s+celery@", table.stdout, re.M)

    runs = cli("runs", env=env)
    assert runs.returncode == 0
    assert runs.stdout.splitlines()[0].split() == [
        "RUN",
        "ID",
        "STATE",
        "FLOW",
        "STARTED",
        "(UTC)",
        "DURATION",
        "NODES",
        "DONE",
    ]
    row = next(line for line in runs.stdout.splitlines() if line.startswith(run_id))
    assert row.split()[1] == "succeeded" and row.split()[-1] == "4/4"


def test_inputs_are_json_when_they_parse_else_strings(env) -> None:
    as_json = cli("run", "tests.test_cli:ECHO", "-i", 'x={"a": [1, 2]}', "--wait", env=env)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == {"a": [1, 2]}
    as_text = cli("run", "tests.test_cli:ECHO", "-i", "x=hello world", "--wait", env=env)
    assert json.loads(as_text.stdout) == "hello world"
    bad = cli("run", "tests.test_cli:ECHO", "-i", "no-equals-sign", env=env)
    assert bad.returncode == 2
    assert "expected key=value" in one_line_error(bad)
    missing = cli("run", "tests.test_cli:ECHO", env=env)
    assert missing.returncode == 2
    assert "required parameter 'x'" in one_line_error(missing)


def test_failed_run_prints_node_and_error_and_exits_1(env, tmp_path) -> None:
    out = cli("run", "tests.test_cli:FAILING", "--wait", "--timeout", "60", env=env)
    assert out.returncode == 1
    assert out.stdout == ""
    assert re.search(
        r"run [0-9a-f]{32} failed: node 'boom' raised ValueError: boom went the node", out.stderr
    )
    assert "Traceback" in out.stderr
    run_id = re.search(r"run ([0-9a-f]{32}) failed", out.stderr).group(1)

    status = cli("status", run_id, env=env)
    assert "state     failed" in status.stdout
    assert "error: node 'boom': ValueError: boom went the node" in status.stdout

    # The PNG of the failed run: a red node (failed) and a grey one (never started).
    png = tmp_path / "failed.png"
    shown = cli("show", run_id, "--png", str(png), env=env)
    assert shown.returncode == 0, shown.stderr
    from tests.test_render import colours_in

    found = colours_in(png)
    assert {"failed", "upstream_failed"} <= found and "succeeded" not in found


@contextlib.contextmanager
def gate(env: dict[str, str]) -> Iterator[str]:
    """A gate for HELD's node (its `gate` input), opened when the test is done with it."""
    name = uuid.uuid4().hex
    client = redis.Redis.from_url(env["CELERY_GRAPH_REDIS_URL"])
    try:
        yield name
    finally:
        open_gate(client, name)
        client.close()


def test_cancel_a_running_run(env) -> None:
    with gate(env) as g:
        out = cli("run", "tests.test_cli:HELD", "--input", f"gate={g}", env=env)
        run_id = out.stdout.strip()
        wait_state(env, run_id, {"running"})
        cancelled = cli("cancel", run_id, env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout == f"cancelled run {run_id}\n"
    again = cli("cancel", run_id, env=env)
    assert again.returncode == 1
    assert "already cancelled" in again.stderr
    as_json = cli("cancel", run_id, "--json", env=env)
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout) == {
        "run_id": run_id,
        "cancelled": False,
        "state": "cancelled",
    }
    data = json.loads(cli("status", run_id, "--json", env=env).stdout)
    assert data["state"] == "cancelled"
    assert data["nodes"]["step"]["state"] == "cancelled"


def test_resume_a_cancelled_run_keeps_stored_results(env) -> None:
    with gate(env) as g:
        out = cli("run", "tests.test_cli:HELD", "--input", f"gate={g}", env=env)
        run_id = out.stdout.strip()
        wait_state(env, run_id, {"running"})
        assert cli("cancel", run_id, env=env).returncode == 0
    # the held node may finish before the resume (its result is kept) or not (it runs
    # again): either way the resumed run completes, and `step` runs only after the resume
    resumed = cli("resume", run_id, "--wait", "--timeout", "30", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"run {run_id} resumed" in resumed.stderr
    assert json.loads(resumed.stdout) == "step"
    again = cli("resume", run_id, env=env)
    assert again.returncode == 1
    assert "not resumable: run is succeeded" in again.stderr


def test_show_flow_as_text_mermaid_and_dot(bare_env) -> None:
    text = cli("show", "tests.test_cli:ETL", env=bare_env)
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[1] == "extract"
    assert "load  (join of " in text.stdout and "load ↑" in text.stdout
    mermaid = cli("show", "tests.test_cli:ETL", "--format", "mermaid", env=bare_env)
    assert mermaid.stdout.startswith("flowchart TD\n")
    assert "n_extract --> n_transform" in mermaid.stdout
    dot = cli("show", "tests.test_cli:ETL", "-f", "dot", env=bare_env)
    assert dot.stdout.startswith("digraph ") and '"audit" -> "load";' in dot.stdout


def test_show_run_marks_states(env) -> None:
    run_id = cli("run", "tests.test_cli:ETL", env=env).stdout.strip()
    wait_state(env, run_id, {"succeeded"})
    out = cli("show", run_id, "--colour", "never", env=env)
    assert out.returncode == 0, out.stderr
    assert f"run {run_id}: succeeded" in out.stdout
    assert "✓ extract [succeeded]" in out.stdout
    mermaid = cli("show", run_id, "-f", "mermaid", env=env)
    assert "classDef succeeded fill:#66bb6a" in mermaid.stdout


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["status", "0123456789abcdef0123456789abcdef"], "no run 0123456789abcdef"),
        (["status", "not-a-run"], "is not a run id"),
        (["cancel", "0123456789abcdef0123456789abcdef"], "no run 0123456789abcdef"),
        (["show", "0123456789abcdef0123456789abcdef"], "no run 0123456789abcdef"),
        (["run", "no_such_module_xyz:flow"], "cannot import module 'no_such_module_xyz'"),
        (["run", "tests.test_cli:MISSING"], "has no attribute 'MISSING'"),
        (["run", "tests.test_cli:NOT_A_FLOW"], "is a int, not a celery-graph flow"),
        (["show", "tests.test_cli"], "is not MODULE:FLOW"),
        (["-A", "no_such_app_xyz", "runs"], "cannot load the Celery app 'no_such_app_xyz'"),
        (["runs", "--key-prefix", "bad{prefix}"], "malformed key prefix"),
    ],
)
def test_bad_input_exits_2_with_one_line(bare_env, args, reason) -> None:
    out = cli(*args, env=bare_env)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert reason in one_line_error(out)


def test_unreachable_redis_exits_2_with_one_line(bare_env) -> None:
    for args in (["runs"], ["status", "0" * 32], ["run", "tests.test_cli:ETL"]):
        out = cli(*args, "--redis-url", "redis://127.0.0.1:1/0", env=bare_env, timeout=60)
        assert out.returncode == 2, (args, out.stderr)
        assert "Redis unreachable" in one_line_error(out)


def test_options_pick_app_prefix_and_url(bare_env) -> None:
    # -A before or after the command; --key-prefix selects another set of runs.
    empty = cli(
        "runs", "-A", "tests.test_cli:worker_app", "--key-prefix", "cgcli:empty", env=bare_env
    )
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout == "no runs under key prefix 'cgcli:empty'\n"
    run_id = cli("-A", "tests.test_cli:worker_app", "run", "tests.test_cli:ETL", env=bare_env)
    assert run_id.returncode == 0, run_id.stderr
    listed = cli("runs", "--redis-url", bare_env["CELERY_GRAPH_REDIS_URL"], env=bare_env)
    assert run_id.stdout.strip() in listed.stdout


def test_workers_with_none_registered_under_the_prefix(bare_env) -> None:
    # the celery worker of this module is plain `celery worker`, not graph-worker, so no
    # heartbeat is registered under the fresh prefix (examples test a live graph-worker)
    out = cli("workers", "--key-prefix", "cgcli:nobody-here", env=bare_env)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "no live workers under key prefix 'cgcli:nobody-here'\n"


def test_wait_timeout_exits_1_and_the_run_goes_on(env) -> None:
    with gate(env) as g:
        out = cli(
            "run",
            "tests.test_cli:HELD",
            "--input",
            f"gate={g}",
            "--wait",
            "--timeout",
            "0.5",
            env=env,
        )
        assert out.returncode == 1
        match = re.search(r"error: run ([0-9a-f]{32}) still running after 0.5 s", out.stderr)
        assert match, out.stderr
        run_id = match.group(1)
        assert json.loads(cli("status", run_id, "--json", env=env).stdout)["state"] == "running"
        assert cli("cancel", run_id, env=env).returncode == 0


def test_run_without_any_broker_setting_sends_through_the_graph_redis(env) -> None:
    # No -A, no app in the flow's module, no CELERY_BROKER_URL: the graph Redis is used.
    bare = {k: v for k, v in env.items() if k != "CELERY_BROKER_URL"}
    out = cli("run", "tests.test_cli:ETL", "--input", "n=1", "--wait", "--timeout", "60", env=bare)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"count": 1, "rows": [10]}


def test_progress_line_counts() -> None:
    from celery_graph.model import NodeStatus, RunStatus

    states = ["succeeded", "succeeded", "skipped", "failed", "running", "pending"]
    nodes = {f"n{i}": NodeStatus(state) for i, state in enumerate(states)}
    status = RunStatus("0" * 32, "running", "g", 0.0, None, nodes)
    line = cli_module.progress_line(status, width=12)
    assert line == "[########----] 3/6 nodes done (1 skipped), 1 failed  running: n4"


def test_bad_places_and_values_are_one_line_errors(tmp_path) -> None:
    env = base_env("redis://127.0.0.1:1/0")
    out = cli(
        "show", "tests.test_cli:ETL", "--out", str(tmp_path / "no" / "such" / "a.svg"), env=env
    )
    assert out.returncode == 2
    assert "cannot write" in one_line_error(out) and "No such file or directory" in out.stderr
    out = cli("runs", "--redis-url", "redis+cluster://127.0.0.1:1", env=env)
    assert out.returncode == 2
    assert "Redis unreachable while connecting to the Redis Cluster" in one_line_error(out)
    out = cli("reconcile", "--interval", "-1", env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--interval" in out.stderr, out.stderr


def test_json_answers_of_refusals_and_limits_checked(env) -> None:
    out = cli("run", "tests.test_cli:ECHO", "--input", "x=hi", env=env)
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip()
    wait_state(env, run_id, {"succeeded"})
    refused = cli("resume", run_id, "--json", env=env)
    assert refused.returncode == 1 and "not resumable" in refused.stderr
    assert json.loads(refused.stdout) == {"run_id": run_id, "resumed": False, "state": "succeeded"}
    for bad in ("0", "-5"):
        out = cli("runs", "-n", bad, env=env)
        assert out.returncode == 2 and "--limit" in out.stderr and "Traceback" not in out.stderr


def test_an_app_attribute_that_is_missing_is_named() -> None:
    out = cli("-A", "tests.test_cli:no_such_app", "runs", env=base_env("redis://127.0.0.1:1/0"))
    assert out.returncode == 2
    assert "module 'tests.test_cli' has no attribute 'no_such_app'" in one_line_error(out)


def test_a_misspelt_input_is_one_line_error(bare_env) -> None:
    out = cli("run", "tests.test_cli:ETL", "--input", "m=4", env=bare_env)
    assert out.returncode == 2
    assert "run input(s) 'm' are a parameter of no node" in one_line_error(out)
