"""Bytecode for the work tree, written once per test session.

With PYTHONDONTWRITEBYTECODE set (CI sets it), Python writes no ``.pyc`` files, and
``make venv`` compiles only the virtualenv's packages: every process the tests start
(worker subprocesses, commands, pytest-xdist workers) compiled the work tree's
``celery_graph`` and ``tests`` modules from source again, about 0.3 CPU-seconds per
process. ``pytest_configure`` compiles them here, in the main pytest process (not in
each xdist worker), for the running interpreter; a process still reads a ``.pyc`` with
that variable set. A module edited later is compiled from source until the next session
writes its ``.pyc`` again (the timestamp in the ``.pyc`` no longer matches).

pytest keeps its own cache of the test modules whose asserts it rewrote, and writes it
under the same rule: each pytest-xdist worker rewrote and compiled every test module it
collected, about 4 of its 6 CPU-seconds of collection. Before starting xdist workers,
the main process writes that cache once (``write_rewritten_tests``), with pytest's own
functions; the workers read it. Where those functions differ (another pytest), nothing
is written and the workers rewrite as before."""

from __future__ import annotations

import compileall
from pathlib import Path

import pytest

from tests.support import ROOT

PACKAGES = ("celery_graph", "tests", "examples")


def compile_work_tree() -> bool:
    """Write the missing or stale ``.pyc`` files of the work tree's packages; False if
    one could not be written (a read-only tree: the processes compile from source)."""
    ok = True
    for name in PACKAGES:
        path = ROOT / name
        if path.is_dir():
            ok = bool(compileall.compile_dir(path, quiet=2, workers=1)) and ok
    return ok


def selected_test_files(config: pytest.Config) -> list[Path]:
    """The ``tests/test_*.py`` files the command line names (all of them for a
    directory, or for none: ``testpaths``)."""
    tests = (ROOT / "tests").resolve()
    found: set[Path] = set()
    for arg in config.args or [str(tests)]:
        path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
        if path.is_dir() and (path == tests or tests.is_relative_to(path)):
            found.update(tests.glob("test_*.py"))
        elif path.parent == tests and path.name.startswith("test_") and path.suffix == ".py":
            found.add(path)
    return sorted(found)


def write_rewritten_tests(config: pytest.Config) -> int:
    """Write pytest's cache of the rewritten test modules (``tests/conftest.py`` and the
    test files the session collects) where it is missing or stale; how many were
    written."""
    try:
        from _pytest.assertion import rewrite  # pytest's own, as its import hook uses it

        state = config.stash[rewrite.assertstate_key]
        written = 0
        for fn in [ROOT / "tests" / "conftest.py", *selected_test_files(config)]:
            cache_dir = rewrite.get_cache_dir(fn)
            pyc = cache_dir / (fn.name[:-3] + rewrite.PYC_TAIL)
            if rewrite._read_pyc(fn, pyc, state.trace) is not None:
                continue
            if not rewrite.try_makedirs(cache_dir):
                return written
            source_hash, co = rewrite._rewrite_test(fn, config)
            written += bool(rewrite._write_pyc(state, co, source_hash, pyc))
        return written
    except Exception:  # another pytest's internals: the workers rewrite as before
        return 0


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the main process, before xdist's workers start
        compile_work_tree()
        if config.getoption("numprocesses", None):  # xdist workers will collect
            write_rewritten_tests(config)
