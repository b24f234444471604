"""Small helpers shared by tests: waiting on real signals with a deadline, the session's
name, declaring what starts processes (the slow tier), the tools ``make`` installs."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., object])

SLOW_ATTRIBUTE = "_cgtest_starts_processes"


def starts_processes(starter: F) -> F:
    """Declare a fixture, function or class slow: it starts a worker subprocess, a broker
    other than the test Redis (RabbitMQ), a Redis Cluster, Sentinel, Chromium, a
    packaging build or another server. tests/support/tiers.py marks every test that uses
    such a fixture (directly or through other fixtures), or that calls such a function or
    class (or a subclass; itself, or through a function of the tests it calls),
    ``slow``. On a fixture, put it under ``@pytest.fixture``."""
    setattr(starter, SLOW_ATTRIBUTE, True)
    return starter


def session_name() -> str:
    """The name of this test process's queues, worker host names and key prefixes:
    CGTEST_SESSION (made up once, inherited by subprocesses), plus the pytest-xdist worker
    id in an xdist worker, so two workers sharing RabbitMQ or a configured Redis never
    consume or read each other's messages and keys. Subprocesses inherit the result."""
    session = os.environ.setdefault("CGTEST_SESSION", uuid.uuid4().hex[:8])
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and os.environ.get("CGTEST_SESSION_WORKER") != worker:
        session = f"{session}-{worker}"
        os.environ.update(CGTEST_SESSION=session, CGTEST_SESSION_WORKER=worker)
    return session


def wait_for(predicate: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it is truthy; fail with ``what`` after ``timeout``.
    Used only where no blocking signal exists (e.g. another process's state)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def assert_order(trace: list[str], before: str, after: str) -> None:
    end, start = f"end:{before}", f"start:{after}"
    assert end in trace, f"{before} never finished: {trace}"
    assert start in trace, f"{after} never started: {trace}"
    assert trace.index(end) < trace.index(start), f"{after} started before {before} ended: {trace}"


class Postruns:
    """What the in-process worker finished, from Celery's task_postrun signal."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []  # (task id, return value)
        self._cond = threading.Condition(threading.RLock())

    def _record(self, task_id=None, retval=None, **kw) -> None:
        with self._cond:
            self.seen.append((task_id, retval))
            self._cond.notify_all()

    def count(self, task_id: str) -> int:
        with self._cond:  # reentrant use from wait(): Condition wraps an RLock
            return sum(1 for t, _ in self.seen if t == task_id)

    def wait(self, task_id: str, times: int = 1, timeout: float = 20.0) -> bool:
        """Block until ``task_id`` finished ``times`` times; False after ``timeout``."""
        with self._cond:
            return self._cond.wait_for(lambda: self.count(task_id) >= times, timeout)

    def retval(self, task_id: str) -> object:
        return next(r for t, r in self.seen if t == task_id)


@contextmanager
def postruns() -> Iterator[Postruns]:
    from celery.signals import task_postrun

    recorder = Postruns()
    task_postrun.connect(recorder._record, weak=False)
    try:
        yield recorder
    finally:
        task_postrun.disconnect(recorder._record)


def most_at_once(trace: list[str], who: str | None = None) -> int:
    """The most 'start:<who>' ... 'end:<who>' intervals of a trace open at any point (only
    those of ``who`` when given). Redis orders the marks: no clock of any process is
    involved."""
    now = most = 0
    for event in trace:
        kind, _, name = event.partition(":")
        if who is not None and name != who:
            continue
        if kind not in ("start", "end"):
            continue
        now += 1 if kind == "start" else -1
        most = max(most, now)
    return most


def find_binary(names: Sequence[str]) -> str | None:
    """The first of ``names`` on PATH."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def binary_or_skip(names: Sequence[str], *, target: str, package: str, hint: str = "") -> str:
    """The first of ``names`` on PATH: Debian's ``package``, which ``make TARGET``
    installs (``make test`` runs it first). When there is none the test skips, saying
    why, only if none can be installed here (no apt-get, or not root); it fails when
    ``make TARGET`` would have installed one, and under CI."""
    found = find_binary(names)
    if found is not None:
        return found
    also = f", or {hint}" if hint else ""
    if shutil.which("apt-get") and os.geteuid() == 0:
        pytest.fail(f"no {names[0]}: run `make {target}` (apt-get install {package}){also}")
    reason = (
        f"no {names[0]}, and it cannot be installed here (needs apt-get as root): "
        f"install Debian's {package}{also}"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: these tests must run)")
    pytest.skip(reason)


def trace_of(client: Any, tag: str) -> list[str]:
    """The trace of ``tag`` (tests.tasks.trace) read through ``client``: the test's own
    Redis client, which stays valid while a test stops and restarts the graph Redis."""
    return [e.decode() for e in client.lrange(f"cgtest-trace:{tag}", 0, -1)]


def purge_queue(app: Any, queue: str) -> None:
    """Empty a queue this test session created (nothing else uses it); a queue never
    declared has nothing to purge."""
    with app.connection_for_write() as conn, contextlib.suppress(Exception):
        conn.default_channel.queue_purge(queue)
