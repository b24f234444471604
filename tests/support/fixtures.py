"""The session's fixtures, which tests/conftest.py loads: a real Redis (private unless
CELERY_GRAPH_TEST_REDIS_URL is set), a Celery app with its own queue and key prefix and a
real in-process Celery worker, the same engine app on RabbitMQ (a worker subprocess) and
with its graph state on a Redis Cluster (a worker subprocess), ``any_app`` over the three,
and the per-test ``tag``, ``published`` and the node counts check."""

from __future__ import annotations

import gc
import os
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker as start_inprocess_worker
from celery.signals import before_task_publish

from celery_graph.testing import redis_url as private_redis_url
from tests.support.apps import make_app
from tests.support.counts import check_all
from tests.support.helpers import session_name, starts_processes, wait_for
from tests.support.processes import Workers, amqp_worker

SESSION = session_name()


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
    recount of its node states (tests/support/counts.py)."""
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


def started_app(redis_url: str, broker_url: str | None, name: str, **conf: object) -> Celery:
    """The engine tests' app with ``conf``, the graph tasks of tests/tasks.py registered,
    finalized."""
    app = make_app(redis_url, broker_url, name, SESSION)
    app.conf.update(conf)  # before finalize: the queues a worker consumes come from it
    import tests.tasks  # noqa: F401  registers the graph tasks on the app

    app.finalize()
    return app


@pytest.fixture(scope="session")
def celery_app(redis_url: str) -> Celery:
    """The app on a Redis broker (graph state in the same private Redis)."""
    return started_app(redis_url, None, "cgtest")


@pytest.fixture(scope="session")
def worker(celery_app: Celery) -> Iterator[object]:
    with start_inprocess_worker(
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
    os.environ.update(CGTEST_REDIS_URL=redis_url, CGTEST_AMQP_URL=RABBITMQ_URL)
    app = started_app(redis_url, RABBITMQ_URL, "cgtest_amqp")
    app.conf.task_default_queue = f"cgtest-amqp-{SESSION}"
    hostname = f"cgtest-amqp-{SESSION}@localhost"
    proc = amqp_worker(redis_url, RABBITMQ_URL, hostname)
    try:
        wait_for(
            lambda: proc.poll() is not None or app.control.ping([hostname], timeout=0.5),
            timeout=60,
            what="the RabbitMQ worker subprocess to answer ping",
        )
        assert proc.poll() is None, "the RabbitMQ worker subprocess exited at start"
        yield app
    finally:
        proc.stop(grace=30)
        # the queue is ours: remove it so RabbitMQ keeps nothing from the tests
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(app.conf.task_default_queue)


# leases short enough that a killed worker's runs come back within seconds
SHORT_LEASES = {
    "CELERY_GRAPH_QUEUED_LEASE": "2",
    "CELERY_GRAPH_RUNNING_LEASE": "2",
    "CELERY_GRAPH_RECONCILE_INTERVAL": "0.5",
}


@pytest.fixture()
def short_lease_workers(redis_url: str) -> Iterator[Workers]:
    """``celery worker`` subprocesses (none started yet: ``start(name)``) on a queue and
    key prefix of their own, with 2 s leases and a sweep every 0.5 s."""
    with Workers(redis_url, env=SHORT_LEASES) as workers:
        yield workers


@pytest.fixture()
def app(celery_app: Celery, worker: object) -> Celery:
    """The Redis-broker app, with a worker consuming its queue; made the current app."""
    celery_app.set_current()
    return celery_app


@pytest.fixture()
def eager_off(app: Celery) -> Iterator[Celery]:
    """``app`` with eager successors off for one test: every node is a broker message.
    For the tests that look at node messages themselves (their size, what they carry,
    how many): an eager successor runs in the worker of the node before it and sends
    none (executor/eager.py, tests/test_eager.py)."""
    saved = app.conf.get("graph_eager_successors")
    app.conf.graph_eager_successors = False
    try:
        yield app
    finally:
        app.conf.graph_eager_successors = saved


@pytest.fixture(scope="session")
@starts_processes
def cluster_url() -> Iterator[str]:
    """A Redis Cluster of three primaries on loopback (tests/support/servers.py)."""
    from tests.support.servers import PrivateCluster

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
def started() -> Iterator[list[str]]:
    """The task ids of every task run in this process (task_prerun), in order."""
    from celery.signals import task_prerun

    seen: list[str] = []

    def record(task_id=None, **_):
        seen.append(task_id)

    task_prerun.connect(record, weak=False)
    try:
        yield seen
    finally:
        task_prerun.disconnect(record)


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
