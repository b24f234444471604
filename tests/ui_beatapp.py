"""A Celery app whose beat schedule starts a graph every second through ``flow.s()``, for
``celery -A tests.ui_beatapp beat`` in the dashboard's tests (CGTEST_REDIS_URL and
CGTEST_SESSION name the session's Redis, key prefix and queue)."""

from __future__ import annotations

import os

from tests.support.apps import make_app

app = make_app(os.environ["CGTEST_REDIS_URL"], None, "cgtest_beat")

from tests.ui_tasks import ETL  # noqa: E402  (the app first: flow.s() stores the graph)

# The documented form: a graph's signature is an ordinary beat entry.
etl = ETL.s(n=2)
app.conf.beat_schedule = {
    "ui-etl-every-second": {"task": etl.task, "kwargs": etl.kwargs, "schedule": 1.0},
}
