"""Builds the Celery app used on both sides of the subprocess tests: the worker
subprocess (from environment variables) and the test process (from arguments).

Environment of a worker subprocess:

    CGOPS_BROKER_URL   Redis URL of broker and graph state (the test's private Redis)
    CGOPS_QUEUE        default queue (unique per test module)
    CGOPS_VISIBILITY   broker visibility timeout in seconds (optional)
    CGOPS_PRIORITY     "1": queue_order_strategy="priority" (Redis)
    CGOPS_MAX_PRIORITY x-max-priority of the queues Celery declares (RabbitMQ)

The key prefix is not set here on purpose: workers get it from `graph-worker --key-prefix`
(CELERY_GRAPH_KEY_PREFIX), the test process sets app.conf.graph_key_prefix.
"""

from __future__ import annotations

import os

from celery import Celery


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
    app = Celery(name, broker=broker_url, set_as_current=False)
    transport: dict = {}
    if visibility:
        # a killed worker's message comes back after ~visibility + the restore sweep
        transport.update(
            visibility_timeout=visibility, unacked_restore_interval=1, unacked_restore_throttle=1
        )
    if priority:
        transport.update(queue_order_strategy="priority")
    app.conf.update(
        task_default_queue=queue,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
    )
    if key_prefix:
        app.conf.graph_key_prefix = key_prefix
    if graph_redis_url:
        app.conf.graph_redis_url = graph_redis_url
    if max_priority is not None:
        app.conf.task_queue_max_priority = max_priority
    return app


def app_from_env() -> Celery:
    env = os.environ
    return build_app(
        env["CGOPS_BROKER_URL"],
        env["CGOPS_QUEUE"],
        visibility=float(env["CGOPS_VISIBILITY"]) if env.get("CGOPS_VISIBILITY") else None,
        priority=env.get("CGOPS_PRIORITY") == "1",
        max_priority=int(env["CGOPS_MAX_PRIORITY"]) if env.get("CGOPS_MAX_PRIORITY") else None,
    )
