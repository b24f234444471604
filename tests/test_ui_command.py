"""``python -m celery_graph.ui`` and ``celery-graph ui`` as a user runs them, and a flow
scheduled by a real ``celery beat`` process through ``flow.s()``, seen on the dashboard."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from celery_graph.state import state_for
from celery_graph.ui.__main__ import main
from tests.support import ROOT
from tests.support.helpers import wait_for
from tests.support.processes import with_root
from tests.support.ui import Http

pytestmark = pytest.mark.slow  # the dashboard command and celery beat in subprocesses

pytest_plugins = ("tests.support.ui_fixtures",)


class Lines:
    """A subprocess's stderr, read line by line in a thread."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)


def test_the_command_serves_the_dashboard_with_basic_auth_until_sigterm(redis_url, tag):
    env = dict(
        os.environ,
        CELERY_GRAPH_REDIS_URL=redis_url,
        CELERY_GRAPH_KEY_PREFIX=f"cgtest-uicmd-{tag}",
        CELERY_GRAPH_UI_BASIC_AUTH="admin:s3cret",
    )
    env.pop("CELERY_APP", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery_graph.ui", "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        err = Lines(proc.stderr)

        def ready() -> str | None:
            assert proc.poll() is None, err.text()
            found = re.search(r"serving (http://127\.0\.0\.1:\d+/)", err.text())
            return found.group(1) if found else None

        url = wait_for(ready, 30, "the dashboard to serve").rstrip("/")
        assert f"key prefix 'cgtest-uicmd-{tag}'" in err.text()
        assert Http(url).request("GET", "/healthz") == (200, {"ok": True})
        assert Http(url).request("GET", "/api/runs")[0] == 401
        status, page = Http(url, "admin:s3cret").request("GET", "/api/runs")
        assert status == 200 and page["runs"] == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def serving(proc: subprocess.Popen, err: Lines) -> str:
    """The dashboard's address, once the command says it serves."""

    def ready() -> str | None:
        assert proc.poll() is None, err.text()
        found = re.search(r"serving (http://127\.0\.0\.1:\d+/)", err.text())
        return found.group(1) if found else None

    return wait_for(ready, 30, "the dashboard to serve").rstrip("/")


def scripts() -> Path:
    return Path(sys.executable).parent


@pytest.mark.parametrize(
    "command, prefix",
    [
        # celery-graph's own -A; the key prefix from the environment
        (["celery-graph", "-A", "tests.test_cli:worker_app", "ui"], "cgtest-uicmd-{tag}"),
        # Celery's -A; the key prefix is that app's own setting
        (
            ["celery", "-A", "tests.test_cli_native:worker_app", "workflow", "ui"],
            "cgtest-uiapp-{tag}",
        ),
    ],
)
def test_celery_graph_ui_and_celery_workflow_ui_serve_the_dashboard(
    redis_url, tag, command, prefix
):
    env = dict(
        os.environ,
        CELERY_GRAPH_REDIS_URL=redis_url,
        CELERY_GRAPH_KEY_PREFIX=f"cgtest-uicmd-{tag}",
        CGNATIVE_PREFIX=f"cgtest-uiapp-{tag}",
        CELERY_GRAPH_UI_BASIC_AUTH="admin:s3cret",
        PYTHONPATH=with_root(os.environ.get("PYTHONPATH")),
    )
    env.pop("CELERY_APP", None)
    argv = [str(scripts() / command[0]), *command[1:], "--port", "0"]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        err = Lines(proc.stderr)
        url = serving(proc, err)
        assert f"key prefix '{prefix.format(tag=tag)}'" in err.text()
        assert Http(url).request("GET", "/healthz") == (200, {"ok": True})
        assert Http(url).request("GET", "/api/runs")[0] == 401
        assert Http(url, "admin:s3cret").request("GET", "/api/runs")[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_celery_graph_ui_without_tornado_names_the_extra(tmp_path):
    # a tornado that cannot be imported, ahead of the installed one on the path
    (tmp_path / "tornado").mkdir()
    (tmp_path / "tornado" / "__init__.py").write_text("raise ImportError('no tornado here')\n")
    env = dict(
        os.environ,
        PYTHONPATH=with_root(None, str(tmp_path)),
        CELERY_GRAPH_REDIS_URL="redis://127.0.0.1:1/0",
    )
    out = subprocess.run(
        [str(scripts() / "celery-graph"), "ui"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert out.stderr == (
        "celery-graph: error: the dashboard needs Tornado: pip install 'celery-graph[ui]'\n"
    )


# Bad options of the dashboard, and the words of the one line each gets, whichever way
# it is started.
BAD_OPTIONS = [
    (["--basic-auth", "admin"], "--basic-auth: expected USER:PASSWORD"),
    (["--basic-auth", "admin:"], "empty user or password"),
    (["--port", "70000"], "--port 70000"),
    (["-A", "no_such_module_for_ui"], "cannot load the Celery app"),
    (["--key-prefix", "bad prefix"], "malformed key prefix"),
]


@pytest.mark.parametrize("args, words", BAD_OPTIONS)
def test_celery_graph_ui_bad_options_exit_2_with_one_line(args, words):
    env = dict(os.environ, CELERY_GRAPH_REDIS_URL="redis://127.0.0.1:1/0")
    out = subprocess.run(
        [str(scripts() / "celery-graph"), "ui", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("celery-graph: error: "), out.stderr
    assert words in lines[0]


@pytest.mark.parametrize("args, words", BAD_OPTIONS)
def test_python_m_celery_graph_ui_bad_options_exit_2_with_one_line(celery_app, capsys, args, words):
    """``python -m celery_graph.ui`` is the same command: the same one line."""
    before = dict(celery_app.conf)  # Celery's current app: it must come out unchanged
    assert main(args) == 2
    assert {k: celery_app.conf[k] for k in before} == before
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("celery-graph: error: "), lines
    assert words in lines[0]


def test_celery_beat_starts_a_flow_through_flow_s_and_the_dashboard_names_it(
    app, http, redis_url, tmp_path
):
    t0 = state_for(app).runs.time()
    env = dict(
        os.environ,
        CGTEST_REDIS_URL=redis_url,
        PYTHONPATH=with_root(os.environ.get("PYTHONPATH")),
    )
    beat = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.ui_beatapp",
            "beat",
            "-l",
            "WARNING",
            "-s",
            str(tmp_path / "schedule"),
            "--pidfile=",
            "--max-interval",
            "1",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        err = Lines(beat.stderr)

        def scheduled_runs():
            assert beat.poll() is None, err.text()
            page = http.get(f"/api/runs?flow=ui-etl&state=succeeded&since={t0}")
            return page["runs"] if len(page["runs"]) >= 2 else None

        runs = wait_for(scheduled_runs, 30, "two runs started by celery beat")
    finally:
        beat.terminate()
        beat.wait(15)
    for run in runs:
        data = http.get(f"/api/runs/{run['run_id']}")
        assert data["inputs"] == {"n": 2} and data["flow"] == "ui-etl"
        assert http.get(f"/api/runs/{run['run_id']}/nodes/load")["result"]["preview"]
    assert runs[0]["created"] - runs[1]["created"] > 0.5  # one a second, not a burst
