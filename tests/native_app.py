"""Existing Celery tasks (plain ``shared_task``, no celery-graph in their code) with their
own rate limit, time limit and route, and an app for `celery -A tests.native_app worker`
subprocesses (CGTEST_NATIVE=1, CGTEST_REDIS_URL, CGTEST_QUEUE, CGTEST_PREFIX). Every task
the worker starts is listed, with its Celery task name and queue, by a ``task_prerun``
handler in ``cgtest-native:<prefix>``."""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery, shared_task
from celery.signals import task_prerun

from tests.support.apps import configure_for_crashes, make_app
from tests.tasks import trace


@shared_task(name="tests.native.routed_sum", rate_limit="2/s")
def routed_sum(a: int, b: int = 0) -> int:
    return a + b


@shared_task(name="tests.native.limited", time_limit=1)
def limited(seconds: float = 5.0) -> float:
    time.sleep(seconds)
    return seconds


@shared_task(name="tests.native.who", bind=True)
def who(self, routed_sum: int) -> dict:
    return {"task": self.name, "id": self.request.id, "got": routed_sum}


@shared_task(name="tests.native.slow_plain")
def slow_plain(tag: str, seconds: float = 2.0) -> str:
    trace(tag, "start:slow_plain")
    time.sleep(seconds)
    trace(tag, "end:slow_plain")
    return "slow_plain"


def routed_queue(queue: str) -> str:
    return f"{queue}-routed"


def configure(app: Celery, queue: str) -> Celery:
    """The routes of the existing tasks (as a Celery project would set them)."""
    app.conf.task_routes = {"tests.native.routed_sum": {"queue": routed_queue(queue)}}
    return app


def seen_key(prefix: str) -> str:
    return f"cgtest-native:{prefix}"


_client: list[redis.Redis] = []


@task_prerun.connect
def _seen(sender=None, task_id=None, task=None, **_):
    prefix = os.environ.get("CGTEST_PREFIX")
    if not (prefix and os.environ.get("CGTEST_NATIVE")):
        return
    if not _client:
        _client.append(redis.Redis.from_url(os.environ["CGTEST_REDIS_URL"]))
    info = getattr(task.request, "delivery_info", None) or {}
    _client[0].rpush(
        seen_key(prefix),
        json.dumps(
            {
                "name": task.name,
                "id": task_id,
                "queue": info.get("routing_key"),
                "at": time.time(),
            }
        ),
    )


def _native_app() -> Celery | None:
    if not os.environ.get("CGTEST_NATIVE"):
        return None
    app = make_app(os.environ["CGTEST_REDIS_URL"], None, "cgtest_native")
    queue = os.environ["CGTEST_QUEUE"]
    configure_for_crashes(app, queue, os.environ["CGTEST_PREFIX"])
    app.conf.cgtest_trace_url = os.environ["CGTEST_REDIS_URL"]
    return configure(app, queue)


app = _native_app()
