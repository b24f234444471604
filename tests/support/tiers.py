"""The test tiers (docs/testing.md), which tests/conftest.py loads: a test is marked
``slow`` when it, or a fixture it uses (directly or through other fixtures), calls one of
the harness's starters (anything declared with ``starts_processes``: the worker starters
of tests/support/processes.py, the Cluster and Sentinel of tests/support/servers.py, the
chaos check, Chromium), or the fixture is itself declared with ``starts_processes``, or
it runs on the RabbitMQ or Redis Cluster engine app. A test that is not slow and still
starts a worker, a broker, a cluster, Sentinel, a browser, a build or another server
fails, naming the process. Under pytest-xdist the tests that share a subprocess worker
or a cluster, and the timing-bound modules, each stay on one xdist worker."""

from __future__ import annotations

import inspect
import os
import subprocess

import pytest

from tests.support.helpers import SLOW_ATTRIBUTE

# fixture parameters (any_app's, walk_state's) that mean RabbitMQ and its subprocess
# worker, or a Redis Cluster, got by request.getfixturevalue
SLOW_APPS = {"rabbitmq": "amqp_app", "cluster": "cluster_app"}
# modules whose tests wait on timeouts of their own (visibility, leases, heartbeats,
# graceful shutdown): under xdist they run one after another on one worker
TIMING_BOUND = {
    "tests/test_chaos.py",
    "tests/test_crashes.py",
    "tests/test_durable_faults.py",
    "tests/test_one_execution.py",
    "tests/test_worker_shutdown.py",
}


def _is_starter(value: object) -> bool:
    """A function or class declared with ``starts_processes`` (or a subclass of one)."""
    if not (inspect.isfunction(value) or isinstance(value, type)):
        return False
    return bool(getattr(value, SLOW_ATTRIBUTE, False))


def _calls_a_starter(function: object, depth: int = 3) -> bool:
    """Whether ``function`` (a fixture or a test), or a function of the tests it calls,
    names one of the harness's starters: such a fixture or test is slow without being
    told."""
    code = getattr(function, "__code__", None)
    if code is None or depth == 0:
        return False
    scope = getattr(function, "__globals__", {})
    codes = [code]
    while codes:
        current = codes.pop()
        codes.extend(c for c in current.co_consts if hasattr(c, "co_names"))
        for name in current.co_names:
            value = scope.get(name)
            if value is None:
                continue
            if value is not function and _is_starter(value):
                return True
            module = getattr(value, "__module__", "") or ""
            if (
                module.startswith("tests.")
                and inspect.isfunction(value)
                and value is not function
                and _calls_a_starter(value, depth - 1)
            ):
                return True
    return False


def _slow_fixtures(item: pytest.Item) -> list[object]:
    """The fixture definitions ``item`` uses that start processes: declared with
    ``starts_processes``, or calling one of the harness's starters."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return []
    found = []
    for name in info.names_closure:
        defs = info.name2fixturedefs.get(name)
        if not defs:
            continue
        func = defs[-1].func
        if getattr(func, SLOW_ATTRIBUTE, False) or _calls_a_starter(func):
            found.append(defs[-1])
    return found


def _xdist_group(item: pytest.Item, names: set[str], app: str | None) -> str | None:
    if app == "amqp_app" or "amqp_app" in names:
        return "rabbitmq"  # one RabbitMQ worker subprocess for all of them
    if app == "cluster_app" or names & {"cluster_app", "cluster_url"}:
        return "cluster"  # one Redis Cluster and its worker subprocess
    module = item.nodeid.split("::")[0]
    if module in TIMING_BOUND:
        return "timing"
    if any(getattr(d, "scope", "") == "module" for d in _slow_fixtures(item)):
        return module  # its module-scoped worker or server starts once
    return None


@pytest.hookimpl(tryfirst=True)  # before -m selects and pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params.values() if callspec else ()
        app = next((SLOW_APPS[p] for p in params if isinstance(p, str) and p in SLOW_APPS), None)
        names = set(getattr(getattr(item, "_fixtureinfo", None), "names_closure", ()))
        if app or _slow_fixtures(item) or _calls_a_starter(getattr(item, "function", None)):
            item.add_marker(pytest.mark.slow)
        group = _xdist_group(item, names, app)
        if group and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(group))
    _fast_only(config, items)


def _fast_only(config: pytest.Config, items: list[pytest.Item]) -> None:
    """CGTEST_FAST_ONLY="tests/a.py tests/b.py": those files' slow tests are deselected
    (.ci/pythons: on the oldest releases, the slow tests whose outcome is the same on
    every release)."""
    files = set(os.environ.get("CGTEST_FAST_ONLY", "").split())
    if not files:
        return
    dropped = [
        i for i in items if i.nodeid.split("::")[0] in files and i.get_closest_marker("slow")
    ]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        gone = {id(i) for i in dropped}
        items[:] = [i for i in items if id(i) not in gone]


# what a fast test may not start: worker, beat, flower and multi commands, Redis Cluster
# and Sentinel, browsers and their drivers, package managers, builds, process managers
SLOW_WORDS = {
    "worker", "celery_graph.worker", "graph-worker", "beat", "flower", "multi",
    "--sentinel", "--cluster", "--cluster-enabled", "apt-get", "honcho", "mkdocs",
    "chromium", "playwright", "prometheus", "promtool",
}  # fmt: skip
_fast_item: list[pytest.Item] = []
_popen_init = subprocess.Popen.__init__


def _slow_process(args: object) -> bool:
    argv = [str(args)] if isinstance(args, (str, bytes, os.PathLike)) else [str(a) for a in args]  # type: ignore[union-attr]
    words = set()
    for i, arg in enumerate(argv):
        if i and argv[i - 1] == "-c":  # python -c CODE: the code counts by what it builds
            if "build_meta" in arg or "start_worker" in arg:
                return True
            continue
        words.update(arg.replace("/", " ").split())
        words.add(os.path.basename(arg))
    return bool(words & SLOW_WORDS)


def _guarded_popen_init(self: subprocess.Popen, args: object, *a: object, **kw: object) -> None:
    if _fast_item and _slow_process(args):
        raise RuntimeError(
            f"{_fast_item[0].nodeid} is not marked slow but starts {args!r}: start it "
            "in a fixture declared with tests.support.helpers.starts_processes, or mark the test "
            "@pytest.mark.slow (docs/testing.md)"
        )
    _popen_init(self, args, *a, **kw)  # type: ignore[arg-type]


subprocess.Popen.__init__ = _guarded_popen_init  # type: ignore[method-assign]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    if item.get_closest_marker("slow") is None:
        _fast_item.append(item)
    try:
        return (yield)
    finally:
        _fast_item.clear()
