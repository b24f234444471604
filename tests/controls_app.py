"""The app of tests/test_celery_controls.py's worker subprocesses: tests.brokerapp's
``env_app`` (its result backend from CGTEST_RESULT_BACKEND when set), with receivers of
Celery's own task signals that record "<signal> <task id>" in the Redis list named by
CGTEST_SIGNALS, the way a user's monitoring would hook them."""

from __future__ import annotations

import os

import redis
from celery import signals

from tests.brokerapp import env_app

app = env_app
if app is not None and os.environ.get("CGTEST_RESULT_BACKEND"):
    app.conf.result_backend = os.environ["CGTEST_RESULT_BACKEND"]

_client: list[redis.Redis] = []


def record(signal: str, task_id: object, extra: str = "") -> None:
    key = os.environ.get("CGTEST_SIGNALS")
    if not key or not task_id:
        return
    if not _client:
        _client.append(redis.Redis.from_url(os.environ["CGTEST_REDIS_URL"]))
    _client[0].rpush(key, f"{signal} {task_id}{extra}")


@signals.task_prerun.connect(weak=False)
def _prerun(task_id=None, **_):
    record("task_prerun", task_id)


@signals.task_postrun.connect(weak=False)
def _postrun(task_id=None, state=None, **_):
    record("task_postrun", task_id, f" {state}")


@signals.task_success.connect(weak=False)
def _success(sender=None, result=None, **_):
    record("task_success", sender.request.id, f" {result!r}")


@signals.task_failure.connect(weak=False)
def _failure(task_id=None, exception=None, **_):
    record("task_failure", task_id, f" {type(exception).__name__}")


@signals.task_retry.connect(weak=False)
def _retry(request=None, **_):
    record("task_retry", getattr(request, "id", None))


@signals.task_revoked.connect(weak=False)
def _revoked(request=None, terminated=None, **_):
    record("task_revoked", getattr(request, "id", None), " terminated" if terminated else "")
