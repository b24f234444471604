"""A Celery app whose beat schedule is one ``schedule()`` entry, for ``celery -A
tests.schedule_beatapp beat`` in tests/test_schedules.py (CGTEST_REDIS_URL and
CGTEST_SESSION name the session's Redis, key prefix and queue; CGTEST_SCHEDULE_NAME,
CGTEST_SCHEDULE_EVERY and CGTEST_SCHEDULE_TAG the entry)."""

from __future__ import annotations

import datetime as dt
import os

from tests.support.apps import make_app

app = make_app(os.environ["CGTEST_REDIS_URL"], None, "cgtest_schedule_beat")

from celery_graph import schedule  # noqa: E402  (the app first: the entry stores the graph)
from tests.tasks import step  # noqa: E402

NAME = os.environ["CGTEST_SCHEDULE_NAME"]
flow = step.bind(name="tick").as_graph(f"flow-{NAME}")
app.conf.beat_schedule = {
    NAME: schedule(
        flow,
        float(os.environ["CGTEST_SCHEDULE_EVERY"]),
        inputs={"tag": os.environ["CGTEST_SCHEDULE_TAG"]},
        overlap="allow",
        catchup=dt.timedelta(minutes=10),
        name=NAME,
    )
}
