"""Celery apps for the tests, importable by worker subprocesses (`celery -A`), built with
the factory of tests/support/apps.py from CGTEST_* environment variables."""

from __future__ import annotations

import os

from celery import Celery

from tests.support.apps import configure_for_crashes, make_app, make_stock_app

__all__ = ["amqp_app", "configure_for_crashes", "env_app", "make_app", "stock_app"]


def _amqp_app() -> Celery | None:
    redis_url = os.environ.get("CGTEST_REDIS_URL")
    amqp_url = os.environ.get("CGTEST_AMQP_URL")
    if not (redis_url and amqp_url):
        return None
    app = make_app(redis_url, amqp_url, "cgtest_amqp")
    app.conf.task_default_queue = f"cgtest-amqp-{os.environ.get('CGTEST_SESSION', 'local')}"
    import tests.tasks  # noqa: F401

    return app


def _env_app() -> Celery | None:
    redis_url = os.environ.get("CGTEST_REDIS_URL")
    queue = os.environ.get("CGTEST_QUEUE")
    if not (redis_url and queue):
        return None
    app = make_app(redis_url, os.environ.get("CGTEST_BROKER_URL"), "cgtest_env")
    if os.environ.get("CGTEST_GRAPH_REDIS_URL"):
        app.conf.graph_redis_url = os.environ["CGTEST_GRAPH_REDIS_URL"]
    configure_for_crashes(
        app, queue, os.environ["CGTEST_PREFIX"], int(os.environ.get("CGTEST_VISIBILITY", "4"))
    )
    import tests.tasks  # noqa: F401

    return app


def _stock_app() -> Celery | None:
    redis_url = os.environ.get("CGTEST_REDIS_URL")
    queue = os.environ.get("CGTEST_QUEUE")
    if not (redis_url and queue and os.environ.get("CGTEST_STOCK")):
        return None
    app = make_stock_app(
        redis_url,
        os.environ.get("CGTEST_BROKER_URL"),
        os.environ.get("CGTEST_GRAPH_REDIS_URL"),
        queue,
        os.environ["CGTEST_PREFIX"],
    )
    import tests.tasks  # noqa: F401

    return app


# `celery -A tests.brokerapp:amqp_app worker` in a subprocess, configured by the env vars
amqp_app = _amqp_app()
# `celery -A tests.brokerapp:env_app worker`: CGTEST_REDIS_URL, CGTEST_QUEUE, CGTEST_PREFIX
env_app = _env_app()
# `celery -A tests.brokerapp:stock_app worker`: like env_app, with Celery's stock settings
stock_app = _stock_app()
