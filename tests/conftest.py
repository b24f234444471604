"""Fixtures: a real Redis (private unless CELERY_GRAPH_REDIS_URL is set), a Celery app with
its own queue and key prefix, and a real in-process Celery worker."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.signals import before_task_publish

from celery_graph.devserver import PrivateRedis

SESSION = uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    configured = os.environ.get("CELERY_GRAPH_TEST_REDIS_URL")
    if configured:
        yield configured
        return
    server = PrivateRedis().start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def rclient(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def make_app(redis_url: str, broker_url: str | None = None, name: str = "cgtest") -> Celery:
    app = Celery(name, broker=broker_url or redis_url, set_as_current=True)
    app.conf.update(
        graph_redis_url=redis_url,
        graph_key_prefix=f"cgtest:{SESSION}",
        task_default_queue=f"cgtest-{SESSION}",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


@pytest.fixture(scope="session")
def celery_app(redis_url: str) -> Celery:
    app = make_app(redis_url)
    import tests.tasks  # noqa: F401  registers the graph tasks on the app

    app.loader.import_default_modules()
    app.finalize()
    return app


@pytest.fixture(scope="session")
def worker(celery_app: Celery) -> Iterator[object]:
    with start_worker(
        celery_app, pool="threads", concurrency=4, perform_ping_check=False, loglevel="WARNING"
    ) as w:
        yield w


@pytest.fixture()
def app(celery_app: Celery, worker: object) -> Celery:
    """The app, with a worker consuming its queue; also made the current app."""
    celery_app.set_current()
    return celery_app


@pytest.fixture()
def tag() -> str:
    """A fresh tag for trace keys of one test."""
    return uuid.uuid4().hex[:12]


@pytest.fixture()
def published() -> Iterator[list[dict]]:
    """Every message published during the test (by client and worker), as Celery's
    before_task_publish signal sees it: {"task", "body", "headers", "size"}."""
    from kombu.utils.json import dumps

    seen: list[dict] = []

    def record(sender=None, body=None, headers=None, **kw):
        size = len(dumps(body)) + len(dumps(headers or {}))
        seen.append({"task": sender, "body": body, "headers": headers, "size": size})

    before_task_publish.connect(record, weak=False)
    try:
        yield seen
    finally:
        before_task_publish.disconnect(record)
