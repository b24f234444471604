"""django-celery-beat: ``PeriodicTask`` rows made from ``flow.s()`` (docs/scheduling.md)
start their runs after the graph key was deleted, through the real ``DatabaseScheduler``:
ticked once in this process on SQLite, and run by a real ``celery beat -S django`` process
on PostgreSQL (a database of its own, created and dropped here)."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import psycopg
import pytest
from celery import Celery
from django.conf import settings

from celery_graph import GraphRun, RunFailed
from celery_graph.protocol import RUN_GRAPH
from celery_graph.state import state_for
from tests.djbeat.settings import postgres
from tests.support import ROOT
from tests.support.beat import graph_stored, lose_graph, recorded, run_of, salted_flow
from tests.support.fixtures import SESSION
from tests.support.helpers import starts_processes, wait_for

# The PostgreSQL server the machine runs (trust auth); this module's database is its own.
PG_ADMIN = os.environ.get("CGTEST_PG_ADMIN", "host=127.0.0.1 port=5432 user=postgres dbname=test")
PG_NAME = f"cgbeat_{SESSION}_{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
@starts_processes
def django_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Django configured in this process: django_celery_beat on SQLite ("default") and
    on this module's PostgreSQL database ("pg", used only once ``postgres_db`` made it)."""
    if not settings.configured:
        path = tmp_path_factory.mktemp("djbeat") / "beat.sqlite3"
        settings.configure(
            SECRET_KEY="celery-graph-tests",
            INSTALLED_APPS=["django_celery_beat"],
            DATABASES={
                "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path)},
                "pg": postgres(PG_NAME),
            },
            USE_TZ=True,
            TIME_ZONE="UTC",
            DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        )
        django.setup()
    from django.core.management import call_command

    call_command("migrate", "django_celery_beat", verbosity=0)
    yield


@pytest.fixture(scope="module")
def postgres_db(django_db: None) -> Iterator[str]:
    """This module's PostgreSQL database, migrated; dropped afterwards."""
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL ({PG_ADMIN}) is not reachable and CI is set: {exc}")
        pytest.skip(f"PostgreSQL ({PG_ADMIN}) is not reachable: {exc}")
    from django.core.management import call_command
    from django.db import connections

    admin.execute(f'CREATE DATABASE "{PG_NAME}"')
    try:
        call_command("migrate", "django_celery_beat", database="pg", verbosity=0)
        yield PG_NAME
    finally:
        connections["pg"].close()
        admin.execute(f'DROP DATABASE IF EXISTS "{PG_NAME}" WITH (FORCE)')
        admin.close()


def periodic_task(name: str, kwargs: dict[str, Any], database: str = "default") -> Any:
    """The documented row (docs/scheduling.md): the signature's task and its kwargs as
    JSON, every hour, last run two hours ago (so it is due at once)."""
    from django.utils import timezone
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    every, _ = IntervalSchedule.objects.using(database).get_or_create(
        every=1, period=IntervalSchedule.HOURS
    )
    return PeriodicTask.objects.using(database).create(
        name=name,
        task=RUN_GRAPH,
        kwargs=json.dumps(kwargs),
        interval=every,
        last_run_at=timezone.now() - datetime.timedelta(hours=2),
    )


def tick_once(app: Celery) -> None:
    """The real DatabaseScheduler, as `celery beat -S django` runs it, ticked once: it
    reads the rows and sends the due one with app.send_task."""
    from django_celery_beat.schedulers import DatabaseScheduler

    scheduler = DatabaseScheduler(app=app)
    try:
        scheduler.tick()
    finally:
        scheduler.close()  # writes last_run_at and total_run_count back to the row


def sent_for(published: list[dict], graph_id: str) -> list[str]:
    return [
        m["headers"]["id"]
        for m in published
        if m["task"] == RUN_GRAPH and (m["body"][1] or {}).get("graph") == graph_id
    ]


def test_a_periodic_task_row_starts_its_run_after_the_graph_key_was_deleted(
    app, django_db, published
):
    flow, salt = salted_flow("djbeat-sqlite")
    sig = flow.s(x=4)
    row = periodic_task(f"djbeat-{salt}", sig.kwargs)
    graph_id = flow.compile().graph_id
    lose_graph(app, graph_id)
    try:
        tick_once(app)
        (task_id,) = sent_for(published, graph_id)
        run = GraphRun(run_of(task_id), app=app)
        assert recorded(app, run.id)["status"] == "succeeded"
        assert run.get(timeout=5) == (4 + salt) * 2 and run.flow_name == flow.flow_name
        assert graph_stored(app, graph_id)
        row.refresh_from_db()
        assert row.total_run_count == 1  # the scheduler recorded the fire, as it does
    finally:
        row.delete()


def test_an_old_row_whose_graph_is_gone_is_a_failed_run_with_the_reason(app, django_db, published):
    flow, salt = salted_flow("djbeat-old")
    spec = flow.compile()
    state_for(app).graphs.put(spec)
    lose_graph(app, spec.graph_id)
    old = {"graph": spec.graph_id, "inputs": {"x": 1}, "flow": flow.flow_name}
    row = periodic_task(f"djbeat-old-{salt}", old)
    try:
        tick_once(app)
        (task_id,) = sent_for(published, spec.graph_id)
        record = recorded(app, run_of(task_id))
        assert record["status"] == "failed" and record["flow"] == flow.flow_name
        with pytest.raises(RunFailed, match="GraphNotFound"):
            GraphRun(run_of(task_id), app=app).get(timeout=5)
    finally:
        row.delete()


def test_a_real_celery_beat_on_postgresql_starts_the_run_after_the_graph_key_was_deleted(
    app, postgres_db, redis_url, tmp_path
):
    from django_celery_beat.models import PeriodicTask

    flow, salt = salted_flow("djbeat-pg")
    sig = flow.s(x=6)
    name = f"djbeat-pg-{salt}"
    periodic_task(name, sig.kwargs, database="pg")
    graph_id = flow.compile().graph_id
    lose_graph(app, graph_id)
    state = state_for(app)
    env = dict(
        os.environ,
        CGTEST_REDIS_URL=redis_url,
        CGTEST_SESSION=SESSION,
        CGTEST_PG_NAME=postgres_db,
        DJANGO_SETTINGS_MODULE="tests.djbeat.settings",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    log_path = Path(tmp_path) / "beat.log"
    with open(log_path, "wb") as log:
        beat = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.djbeat.celeryapp",
                "beat",
                "-S",
                "django_celery_beat.schedulers:DatabaseScheduler",
                "-l",
                "INFO",
                "--max-interval",
                "1",
                "--pidfile=",
            ],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:

            def started() -> list[bytes]:
                assert beat.poll() is None, log_path.read_text(errors="replace")
                return state.client.zrange(state.keys.flow_runs(flow.flow_name), 0, -1)

            (run_id,) = wait_for(started, 60, "celery beat to start the run")

            def fire_written() -> bool:
                row = PeriodicTask.objects.using("pg").get(name=name)
                return row.total_run_count == 1 and row.last_run_at is not None

            # beat writes the fire back to its row in PostgreSQL (its first sync follows
            # its first send; stopping it in the middle of that write loses it)
            wait_for(fire_written, 30, "celery beat to record the fire in its row")
        finally:
            beat.terminate()
            beat.wait(30)
    run = GraphRun(run_id.decode(), app=app)
    assert run.get(timeout=30) == (6 + salt) * 2
    assert graph_stored(app, graph_id)
    assert PeriodicTask.objects.using("pg").get(name=name).total_run_count == 1
