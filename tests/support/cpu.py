"""CPU per test, for deciding what the CI's 2 cores spend: with ``CGTEST_CPU_LOG=<file>``
each pytest process appends one line per test (its Python, CPU-seconds of its own
process, CPU-seconds of the child processes it reaped meanwhile, wall seconds, node id),
and one ``#session`` line with its totals at exit, so CPU spent between tests (session
fixtures' workers idling, collection) shows as the difference. Off unless it is set."""

from __future__ import annotations

import os
import resource
import sys
import time

_LOG = os.environ.get("CGTEST_CPU_LOG", "")
_started: dict[str, tuple[float, float, float]] = {}


def _cpu() -> tuple[float, float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime, time.monotonic()


def _write(line: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(_LOG)), exist_ok=True)
    with open(_LOG, "a") as out:
        out.write(f"3.{sys.version_info.minor} {line}\n")


# setup to teardown, where the test runs (not the xdist controller, which hears of it)
def pytest_runtest_setup(item: object) -> None:
    if _LOG:
        _started[getattr(item, "nodeid", "")] = _cpu()


def pytest_runtest_makereport(item: object, call: object) -> None:
    nodeid = getattr(item, "nodeid", "")
    if _LOG and getattr(call, "when", "") == "teardown" and nodeid in _started:
        own0, kids0, wall0 = _started.pop(nodeid)
        own, kids, wall = _cpu()
        _write(f"{own - own0:.2f} {kids - kids0:.2f} {wall - wall0:.2f} {nodeid}")


def pytest_sessionfinish(session: object, exitstatus: object) -> None:
    if _LOG:
        own, kids, _wall = _cpu()
        _write(f"{own:.2f} {kids:.2f} 0 #session {os.getpid()}")
