"""The one app factory of the tests (``new_app``) and its presets: ``make_app`` (the
engine tests' app: acks late, json, a queue and key prefix of the session),
``configure_for_crashes`` (a fast visibility timeout, for fault tests), ``build_app`` (the
ops tests' app, whose key prefix the worker gets from ``graph-worker --key-prefix``) and
``make_stock_app`` (Celery's stock settings). Worker subprocesses build theirs from the same
functions (tests/brokerapp.py, tests/apps/)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery


def new_app(name: str, broker: str | None, *, current: bool = False, **conf: Any) -> Celery:
    """A Celery app named ``name`` on ``broker`` with settings ``conf``, not logging
    through the root logger (the test's output stays readable); ``current``: made the
    current app."""
    app = Celery(name, broker=broker, set_as_current=current)
    app.conf.update(worker_hijack_root_logger=False, **conf)
    return app


def make_app(
    redis_url: str, broker_url: str | None = None, name: str = "cgtest", session: str = ""
) -> Celery:
    """The engine tests' app: graph state and results in ``redis_url``, the broker
    ``broker_url`` (default: the same Redis), a queue and key prefix of ``session``."""
    session = session or os.environ.get("CGTEST_SESSION", "local")
    return new_app(
        name,
        broker_url or redis_url,
        current=True,
        graph_redis_url=redis_url,
        result_backend=redis_url,  # for Celery canvases (chain/group) around graphs
        graph_key_prefix=f"cgtest:{session}",
        task_default_queue=f"cgtest-{session}",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
    )


def configure_for_crashes(app: Celery, queue: str, prefix: str, visibility: int = 4) -> Celery:
    """Own queue and prefix; a short visibility timeout and a fast restore sweep, so a
    message whose worker was killed comes back within seconds (Redis broker)."""
    app.conf.update(
        task_default_queue=queue,
        graph_key_prefix=prefix,
        broker_transport_options={
            "visibility_timeout": visibility,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
            # a worker SIGKILLed while it sweeps holds kombu's restore mutex until this
            # expires (default 300 s): meanwhile no killed worker's message comes back
            "unacked_mutex_expire": 5,
        },
    )
    return app


def make_stock_app(
    redis_url: str, broker_url: str | None, graph_url: str | None, queue: str, prefix: str
) -> Celery:
    """An app with Celery's stock settings (no acks_late, no visibility timeout, prefetch
    4): only the broker, the graph Redis, the key prefix and the queue are set."""
    return new_app(
        "cgtest_stock",
        broker_url or redis_url,
        current=True,
        graph_redis_url=graph_url or redis_url,
        graph_key_prefix=prefix,
        task_default_queue=queue,
    )


def build_app(
    broker_url: str,
    queue: str,
    *,
    visibility: float | None = None,
    priority: bool = False,
    key_prefix: str | None = None,
    max_priority: int | None = None,
    graph_redis_url: str | None = None,
    name: str = "cgops",
) -> Celery:
    """The ops tests' app (tests/apps/): on ``broker_url`` with default queue ``queue``;
    ``visibility``: a killed worker's message comes back after about that many seconds;
    ``priority``: Redis queues ordered by priority; ``max_priority``: RabbitMQ's
    x-max-priority. The key prefix is left to ``graph-worker --key-prefix`` unless
    ``key_prefix`` is given (the test process's side)."""
    transport: dict = {}
    if visibility:
        # a killed worker's message comes back after ~visibility + the restore sweep
        transport.update(
            visibility_timeout=visibility, unacked_restore_interval=1, unacked_restore_throttle=1
        )
    if priority:
        transport.update(queue_order_strategy="priority")
    conf: dict[str, Any] = {}
    if key_prefix:
        conf["graph_key_prefix"] = key_prefix
    if graph_redis_url:
        conf["graph_redis_url"] = graph_redis_url
    if max_priority is not None:
        conf["task_queue_max_priority"] = max_priority
    return new_app(
        name,
        broker_url,
        task_default_queue=queue,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        **conf,
    )
