"""Helpers for tests that run `graph-worker` as a real subprocess."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import wait_for  # noqa: F401  (re-exported for the ops tests)

ROOT = Path(__file__).resolve().parents[2]
GRAPH_WORKER = [sys.executable, "-m", "celery_graph.worker"]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # the worktree's celery_graph and tests packages win over any installed copy
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("CELERY_GRAPH_KEY_PREFIX", None)
    env.pop("CELERY_GRAPH_REDIS_URL", None)
    env.update(extra)
    return env


@functools.cache
def graph_worker_help() -> str:
    """What `graph-worker --help` prints (run once per test session)."""
    return subprocess.run(
        [*GRAPH_WORKER, "--help"],
        env=subprocess_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout


class WorkerProcess:
    """One `graph-worker` subprocess; its output goes to a log file for failure reports."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        log_path: Path,
        cmd: list[str] | None = None,
    ) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115  closed in stop()
        self.proc = subprocess.Popen(
            [*(cmd or GRAPH_WORKER), *args],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Kill the worker and its pool processes (its own process group)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        else:
            # the main process is gone; pool children may linger in the group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


def start_worker(
    tmp_path: Path,
    name: str,
    *,
    broker_url: str,
    queue: str,
    prefix: str,
    extra_args: list[str] | None = None,
    env: dict[str, Any] | None = None,
    app: str = "tests.apps.opsapp",
    concurrency: int = 2,
) -> WorkerProcess:
    args = [
        "-A",
        app,
        "--key-prefix",
        prefix,
        "-n",
        f"{name}@%h",
        "-c",
        str(concurrency),
        "-l",
        "INFO",
        "--without-mingle",
        "--without-gossip",
        *(extra_args or []),
    ]
    penv = subprocess_env(
        CGOPS_BROKER_URL=broker_url,
        CGOPS_QUEUE=queue,
        CELERY_GRAPH_HEARTBEAT_INTERVAL="1",
        **{k: str(v) for k, v in (env or {}).items()},
    )
    return WorkerProcess(args, penv, tmp_path / f"{name}.log")
