"""The Celery app used on both sides of the subprocess tests, built by
tests/support/apps.py's ``build_app``: in the worker subprocess from environment
variables (``app_from_env``), in the test process from arguments.

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

from tests.support.apps import build_app

__all__ = ["app_from_env", "build_app"]


def app_from_env() -> Celery:
    env = os.environ
    return build_app(
        env["CGOPS_BROKER_URL"],
        env["CGOPS_QUEUE"],
        visibility=float(env["CGOPS_VISIBILITY"]) if env.get("CGOPS_VISIBILITY") else None,
        priority=env.get("CGOPS_PRIORITY") == "1",
        max_priority=int(env["CGOPS_MAX_PRIORITY"]) if env.get("CGOPS_MAX_PRIORITY") else None,
    )
