"""Fixtures: a real Redis (private unless CELERY_GRAPH_REDIS_URL is set), a Celery app with
its own queue and key prefix, and a real in-process Celery worker.

The test tiers (docs/testing.md) are set here too: a test is marked ``slow`` when it, or
a fixture it uses (directly or through other fixtures), calls one of the harness's ways
to start a worker subprocess, a cluster or a Sentinel, or the fixture is declared with
``tests.helpers.starts_processes``, or it runs on the RabbitMQ or Redis Cluster engine
app. A test that is not slow and still starts a worker, a broker, a cluster, Sentinel, a
browser, a build or another server fails, naming the process. Under pytest-xdist the
tests that share a subprocess worker or a cluster, and the timing-bound modules, each
stay on one xdist worker."""

from __future__ import annotations

import functools
import gc
import inspect
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.signals import before_task_publish

from celery_graph.testing import redis_url as private_redis_url
from tests.brokerapp import make_app
from tests.counts_check import check_all
from tests.helpers import SLOW_ATTRIBUTE, session_name, starts_processes, wait_for

SESSION = session_name()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    configured = os.environ.get("CELERY_GRAPH_TEST_REDIS_URL")
    if configured:
        yield configured
        return
    with private_redis_url(private=True) as url:
        yield url
        # AsyncResults of the session's tests die with it; collected after the server is
        # gone, Celery 5.3's Redis backend retried their UNSUBSCRIBE for ~95 s at exit
        gc.collect()


@pytest.fixture(scope="session")
def rclient(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


_COUNTS_SEEN: dict[str, tuple[int, bytes]] = {}


@pytest.fixture(autouse=True)
def exact_counts(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used the test Redis: the node counts every run keeps equal a
    recount of its node states (tests/counts_check.py)."""
    yield
    # (a test Redis given by CELERY_GRAPH_TEST_REDIS_URL may hold other sessions' runs)
    if "redis_url" not in request.fixturenames or os.environ.get("CELERY_GRAPH_TEST_REDIS_URL"):
        return
    client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    try:
        problems = check_all(client, _COUNTS_SEEN)
    finally:
        client.close()
    assert not problems, "node counts differ from a recount: " + "; ".join(problems)


RABBITMQ_URL = os.environ.get("CELERY_GRAPH_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def rabbitmq_reachable() -> bool:
    from kombu import Connection

    try:
        with Connection(RABBITMQ_URL, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:
        return False


def _started_app(redis_url: str, broker_url: str | None, name: str, **conf: object) -> Celery:
    app = make_app(redis_url, broker_url, name, SESSION)
    app.conf.update(conf)  # before finalize: the queues a worker consumes come from it
    import tests.tasks  # noqa: F401  registers the graph tasks on the app

    app.finalize()
    return app


@pytest.fixture(scope="session")
def celery_app(redis_url: str) -> Celery:
    """The app on a Redis broker (graph state in the same private Redis)."""
    return _started_app(redis_url, None, "cgtest")


@pytest.fixture(scope="session")
def worker(celery_app: Celery) -> Iterator[object]:
    with start_worker(
        celery_app, pool="threads", concurrency=4, perform_ping_check=False, loglevel="WARNING"
    ) as w:
        yield w


@pytest.fixture(scope="session")
@starts_processes
def amqp_app(redis_url: str) -> Iterator[Celery]:
    """The app on the RabbitMQ broker, served by a real `celery worker` subprocess;
    graph state stays in the private Redis."""
    if not rabbitmq_reachable():
        if os.environ.get("CI"):
            pytest.fail(f"RabbitMQ at {RABBITMQ_URL} is not reachable and CI is set")
        pytest.skip(f"RabbitMQ at {RABBITMQ_URL} is not reachable")
    env = dict(
        os.environ,
        CGTEST_REDIS_URL=redis_url,
        CGTEST_AMQP_URL=RABBITMQ_URL,
        CGTEST_SESSION=SESSION,
        PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
    )
    os.environ.update(CGTEST_REDIS_URL=redis_url, CGTEST_AMQP_URL=RABBITMQ_URL)
    app = _started_app(redis_url, RABBITMQ_URL, "cgtest_amqp")
    app.conf.task_default_queue = f"cgtest-amqp-{SESSION}"
    hostname = f"cgtest-amqp-{SESSION}@localhost"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.brokerapp:amqp_app",
            "worker",
            "-P",
            "threads",
            "-c",
            "4",
            "-n",
            hostname,
            "-l",
            "WARNING",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
        ],
        env=env,
        cwd=ROOT,
    )
    try:
        wait_for(
            lambda: proc.poll() is not None or app.control.ping([hostname], timeout=0.5),
            timeout=60,
            what="the RabbitMQ worker subprocess to answer ping",
        )
        assert proc.poll() is None, "the RabbitMQ worker subprocess exited at start"
        yield app
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        # the queue is ours: remove it so RabbitMQ keeps nothing from the tests
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(app.conf.task_default_queue)


@pytest.fixture()
def app(celery_app: Celery, worker: object) -> Celery:
    """The Redis-broker app, with a worker consuming its queue; made the current app."""
    celery_app.set_current()
    return celery_app


@pytest.fixture(scope="session")
@starts_processes
def cluster_url() -> Iterator[str]:
    """A Redis Cluster of three primaries on loopback (tests/servers.py)."""
    from tests.servers import PrivateCluster

    cluster = PrivateCluster().start()
    try:
        yield cluster.url
    finally:
        cluster.cleanup()


@pytest.fixture(scope="session")
@starts_processes
def cluster_app(redis_url: str, cluster_url: str) -> Iterator[Celery]:
    """An app with its graph state on the Redis Cluster (the broker stays the private
    Redis), served by a `celery worker` subprocess (Celery's pool optimisations are
    per process: two in-process workers would share one task registry)."""
    from tests.workers import Workers

    workers = Workers(redis_url, concurrency=4, graph_url=cluster_url)
    workers.extra_env["CGTEST_TRACE_REDIS_URL"] = redis_url
    # traces stay on the plain Redis the tests read
    workers.app.conf.cgtest_trace_url = redis_url
    try:
        workers.start("cluster")
        yield workers.app
    finally:
        workers.stop()


@pytest.fixture(params=["redis", "rabbitmq", "cluster"])
def any_app(request: pytest.FixtureRequest) -> Celery:
    """Each engine integration test runs on a Redis broker, on a RabbitMQ broker, and with
    its graph state on a Redis Cluster."""
    name = {"redis": "app", "rabbitmq": "amqp_app", "cluster": "cluster_app"}[request.param]
    app_ = request.getfixturevalue(name)
    app_.set_current()
    return app_


@pytest.fixture()
def tag() -> str:
    """A fresh tag for trace keys of one test."""
    return uuid.uuid4().hex[:12]


@pytest.fixture()
def published() -> Iterator[list[dict]]:
    """Every message published during the test (by client and worker), as Celery's
    before_task_publish signal sees it: {"task", "body", "headers", "size", "thread"}
    ("thread": the publishing thread's ident; the session worker's threads may still be
    publishing for an earlier test's run)."""
    from kombu.utils.json import dumps

    seen: list[dict] = []

    def record(sender=None, body=None, headers=None, **kw):
        size = len(dumps(body)) + len(dumps(headers or {}))
        seen.append(
            {
                "task": sender,
                "body": body,
                "headers": headers,
                "size": size,
                "thread": threading.get_ident(),
            }
        )

    before_task_publish.connect(record, weak=False)
    try:
        yield seen
    finally:
        before_task_publish.disconnect(record)


# -- test tiers ---------------------------------------------------------------------------

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


@functools.cache
def _starters() -> tuple[tuple[object, ...], tuple[type, ...]]:
    """The harness's ways to start worker subprocesses, clusters, Sentinels and the
    browser."""
    from tests.apps.harness import WorkerProcess
    from tests.apps.harness import start_worker as start_worker_process
    from tests.chaos import run_chaos
    from tests.servers import PrivateCluster, PrivateSentinel
    from tests.test_cli_support import celery_worker, graph_worker
    from tests.ui_helpers import chromium_or_skip
    from tests.workers import Workers

    calls = (start_worker_process, celery_worker, graph_worker, run_chaos, chromium_or_skip)
    return calls, (Workers, WorkerProcess, PrivateCluster, PrivateSentinel)


def _calls_a_starter(function: object, depth: int = 3) -> bool:
    """Whether ``function`` (a fixture or a test), or a function of the tests it calls,
    names one of ``_starters()``: such a fixture or test is slow without being told."""
    code = getattr(function, "__code__", None)
    if code is None or depth == 0:
        return False
    calls, classes = _starters()
    scope = getattr(function, "__globals__", {})
    codes = [code]
    while codes:
        current = codes.pop()
        codes.extend(c for c in current.co_consts if hasattr(c, "co_names"))
        for name in current.co_names:
            value = scope.get(name)
            if value is None:
                continue
            if any(value is c for c in calls):
                return True
            if isinstance(value, type) and issubclass(value, classes):
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
            "in a fixture declared with tests.helpers.starts_processes, or mark the test "
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
