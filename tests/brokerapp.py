"""Celery apps for the tests, importable by worker subprocesses (`celery -A`)."""

from __future__ import annotations

import os

from celery import Celery


def make_app(
    redis_url: str, broker_url: str | None = None, name: str = "cgtest", session: str = ""
) -> Celery:
    session = session or os.environ.get("CGTEST_SESSION", "local")
    app = Celery(name, broker=broker_url or redis_url, set_as_current=True)
    app.conf.update(
        graph_redis_url=redis_url,
        result_backend=redis_url,  # for Celery canvases (chain/group) around graphs
        graph_key_prefix=f"cgtest:{session}",
        task_default_queue=f"cgtest-{session}",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


def _amqp_app() -> Celery | None:
    redis_url = os.environ.get("CGTEST_REDIS_URL")
    amqp_url = os.environ.get("CGTEST_AMQP_URL")
    if not (redis_url and amqp_url):
        return None
    app = make_app(redis_url, amqp_url, "cgtest_amqp")
    app.conf.task_default_queue = f"cgtest-amqp-{os.environ.get('CGTEST_SESSION', 'local')}"
    import tests.tasks  # noqa: F401

    return app


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
    """An app with Celery's stock settings (no acks_late, no visibility timeout, prefetch
    4): only the broker, the graph Redis, the key prefix and the queue are set."""
    redis_url = os.environ.get("CGTEST_REDIS_URL")
    queue = os.environ.get("CGTEST_QUEUE")
    if not (redis_url and queue and os.environ.get("CGTEST_STOCK")):
        return None
    app = Celery("cgtest_stock", broker=os.environ.get("CGTEST_BROKER_URL") or redis_url)
    app.conf.update(
        graph_redis_url=os.environ.get("CGTEST_GRAPH_REDIS_URL") or redis_url,
        graph_key_prefix=os.environ["CGTEST_PREFIX"],
        task_default_queue=queue,
        worker_hijack_root_logger=False,
    )
    import tests.tasks  # noqa: F401

    return app


# `celery -A tests.brokerapp:amqp_app worker` in a subprocess, configured by the env vars
amqp_app = _amqp_app()
# `celery -A tests.brokerapp:env_app worker`: CGTEST_REDIS_URL, CGTEST_QUEUE, CGTEST_PREFIX
env_app = _env_app()
# `celery -A tests.brokerapp:stock_app worker`: like env_app, with Celery's stock settings
stock_app = _stock_app()
