"""Subprocess helpers shared by the CLI and example tests: run ``python -m ...`` with the
work tree on PYTHONPATH, and start/stop real ``celery worker`` processes."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent


def redis_db_url(url: str, db: int) -> str:
    """``url`` pointing at database ``db``: a private set of queues and keys per test."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def base_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["CELERY_GRAPH_REDIS_URL"] = redis_url
    env["CELERY_GRAPH_KEY_PREFIX"] = f"cgcli:{uuid.uuid4().hex[:8]}"
    env.pop("CELERY_BROKER_URL", None)
    env.update(extra)
    return env


def run_py(
    args: Sequence[str],
    env: dict[str, str],
    timeout: float = 90,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cli(*args: str, env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """``celery-graph ARGS`` as a user types it (the console script's module)."""
    return run_py(["-m", "celery_graph.cli", *args], env, timeout)


WORKER_OPTIONS = (
    "-P",
    "threads",
    "-c",
    "4",
    "-l",
    "WARNING",
    "--without-gossip",
    "--without-mingle",
)


@contextmanager
def celery_worker(app: str, env: dict[str, str], *extra: str) -> Iterator[subprocess.Popen[str]]:
    """A real ``celery -A app worker`` process; stopped (TERM, then KILL) on exit."""
    with _process(["-m", "celery", "-A", app, "worker", *WORKER_OPTIONS, *extra], env) as p:
        yield p


def graph_worker_available() -> bool:
    return importlib.util.find_spec("celery_graph.worker") is not None


@contextmanager
def graph_worker(app: str, env: dict[str, str], *extra: str) -> Iterator[subprocess.Popen[str]]:
    """A real ``graph-worker -A app`` process (celery worker options pass through)."""
    with _process(["-m", "celery_graph.worker", "-A", app, *WORKER_OPTIONS, *extra], env) as p:
        yield p


@contextmanager
def _process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, *args],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    # what it printed so far, through a handle of its own (the child's offset is shared)
    proc.output = lambda: Path(f"/proc/self/fd/{log.fileno()}").read_text()  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.seek(0)
        output = log.read()
        log.close()
        if proc.returncode not in (0, -signal.SIGTERM):
            print(f"{' '.join(args)} exited {proc.returncode}:\n{output}")
