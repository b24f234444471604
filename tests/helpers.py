"""Small helpers shared by tests: waiting on real signals with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


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
