"""``schedule()`` entries with real workers: overlap policies decided in graph state when
an entry fires, catch-up of occurrences missed while a real ``celery beat`` was down,
what each schedule records, pause and resume from the CLI (docs/scheduling.md)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from celery.schedules import crontab

from celery_graph import GraphRun, schedule
from celery_graph.client.schedules import next_after, occurrences
from celery_graph.client.submit import run_id_for
from celery_graph.errors import MissingParameterError
from celery_graph.protocol import RUN_GRAPH, ScheduleSpec, StartMessage
from celery_graph.state import state_for
from tests.support.beat import run_of, send_like_beat
from tests.support.helpers import postruns, starts_processes, wait_for
from tests.support.processes import ROOT, SESSION, base_env, cli
from tests.tasks import needs_input, read_trace, step

pytest_plugins = ("tests.support.ui_fixtures",)  # ui, http: the dashboard over the session's app


def slow_flow(tag: str, delay: float = 3.0):
    return step.bind(name="slow", delay=delay).as_graph(f"sched-{tag}")


def fire(app, entry: dict, task_id: str | None = None) -> str:
    """What beat does with the entry; returns once the worker took the message."""
    with postruns() as done:
        task_id = send_like_beat(app, entry["kwargs"], task_id)
        assert done.wait(task_id)
    return task_id


def recorded(app, name: str) -> dict:
    found = state_for(app).schedules.get(name)
    assert found is not None, f"schedule {name} not recorded"
    return found


def test_an_entry_is_a_beat_entry_carrying_its_schedule(app, tag):
    flow = slow_flow(tag)
    entry = schedule(flow, dt.timedelta(minutes=5), inputs={"tag": tag}, name=f"s-{tag}")
    assert entry["task"] == RUN_GRAPH and entry["schedule"] == dt.timedelta(minutes=5)
    message = StartMessage.parse(entry["kwargs"])
    assert message.version == 2 and message.flow == f"sched-{tag}"
    assert message.schedule == ScheduleSpec(f"s-{tag}", "skip", {"seconds": 300.0}, None)
    nightly = schedule(flow, crontab(hour=2, minute=0), {"tag": tag}, "allow", 3600.0)
    assert nightly["kwargs"]["schedule"] == {
        "name": f"sched-{tag}",
        "overlap": "allow",
        "catchup": 3600.0,
        "every": {
            "crontab": {
                "minute": "0",
                "hour": "2",
                "day_of_week": "*",
                "day_of_month": "*",
                "month_of_year": "*",
            }
        },
    }
    # an entry without a schedule stays format 1, for workers of the previous release
    assert flow.s(tag=tag).kwargs["v"] == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"overlap": "queue"}, ValueError, "use one of skip, buffer_one, allow"),
        ({"every": 0}, ValueError, "every must be a positive period"),
        ({"every": "daily"}, TypeError, "every must be seconds, a timedelta or a crontab"),
        ({"catchup": -1}, ValueError, "catchup must be a positive timedelta"),
    ],
)
def test_bad_arguments_are_errors_before_anything_is_stored(app, kwargs, error, words):
    flow = step.bind(name="x").as_graph("sched-bad")
    with pytest.raises(error, match=words):
        schedule(flow, **{"every": 60, "inputs": {"tag": "t"}, **kwargs})


def test_a_missing_input_or_name_is_an_error(app):
    with pytest.raises(MissingParameterError, match="needs_input"):
        schedule(needs_input.as_graph("sched-needs"), 60)
    with pytest.raises(ValueError, match="needs name="):
        schedule(step.bind(name="x"), 60)


def test_an_overlapping_fire_under_skip_starts_nothing_and_is_recorded(app, tag):
    name = f"skip-{tag}"
    entry = schedule(slow_flow(tag), 60, inputs={"tag": tag}, overlap="skip", name=name)
    first = fire(app, entry)
    run = GraphRun(run_of(first), app=app)
    assert run.status().state == "running"
    second = fire(app, entry)  # the first run is still going
    state = state_for(app)
    assert not state.client.exists(state.keys.run(run_of(second)))
    record = recorded(app, name)
    assert record["skips"] == 1 and record["last_run"] == run.id and record["runs"] == 1
    assert "still running" in record["skip_reason"]
    assert record["next_fire"] == pytest.approx(record["last_fire"] + 60)
    assert run.get(timeout=30) == "slow"
    third = fire(app, entry)  # the previous run ended: this one starts
    assert GraphRun(run_of(third), app=app).get(timeout=30) == "slow"
    assert read_trace(tag).count("start:slow") == 2
    assert recorded(app, name)["skips"] == 1


def test_allow_starts_overlapping_runs(app, tag):
    entry = schedule(slow_flow(tag, 1.0), 60, {"tag": tag}, overlap="allow", name=f"al-{tag}")
    ids = [fire(app, entry) for _ in range(2)]
    runs = [GraphRun(run_of(i), app=app) for i in ids]
    assert [r.get(timeout=30) for r in runs] == ["slow", "slow"]
    assert recorded(app, f"al-{tag}")["skips"] == 0


def test_buffer_one_keeps_one_run_waiting_and_skips_beyond(app, tag):
    name = f"buf-{tag}"
    entry = schedule(slow_flow(tag, 2.0), 60, {"tag": tag}, overlap="buffer_one", name=name)
    first, second, third = (fire(app, entry) for _ in range(3))
    runs = [GraphRun(run_of(t), app=app) for t in (first, second)]
    assert runs[1].status().state == "queued"
    state = state_for(app)
    assert not state.client.exists(state.keys.run(run_of(third)))
    assert recorded(app, name)["skips"] == 1
    assert [r.get(timeout=60) for r in runs] == ["slow", "slow"]
    assert runs[1].status().nodes["step"].started >= runs[0].status().finished


def test_cancel_previous_cancels_the_running_run_then_starts(app, tag):
    entry = schedule(slow_flow(tag, 5.0), 60, {"tag": tag}, "cancel_previous", name=f"cp-{tag}")
    first = GraphRun(run_of(fire(app, entry)), app=app)
    second = GraphRun(run_of(fire(app, entry)), app=app)
    assert first.status().state == "cancelled"
    assert second.status().state in ("running", "succeeded")
    second.cancel()


def test_pause_and_resume_from_the_cli(app, tag):
    name = f"pause-{tag}"
    entry = schedule(slow_flow(tag, 0.1), 60, {"tag": tag}, overlap="allow", name=name)
    run = GraphRun(run_of(fire(app, entry)), app=app)
    run.get(timeout=30)
    env = base_env(app.conf.graph_redis_url, CELERY_GRAPH_KEY_PREFIX=app.conf.graph_key_prefix)
    out = cli("schedule", "pause", name, env=env)
    assert out.returncode == 0, out.stderr
    listing = cli("schedules", env=env).stdout
    assert name in listing and "paused" in listing, listing
    paused = fire(app, entry)
    state = state_for(app)
    assert not state.client.exists(state.keys.run(run_of(paused)))
    record = recorded(app, name)
    assert record["paused"] and record["skips"] == 1 and record["skip_reason"] == "paused"
    assert cli("schedule", "resume", name, env=env).returncode == 0
    again = GraphRun(run_of(fire(app, entry)), app=app)
    assert again.get(timeout=30) == "slow"
    rows = {r["name"]: r for r in json.loads(cli("schedules", "--json", env=env).stdout)}
    assert rows[name]["paused"] is False and rows[name]["runs"] == 2 and rows[name]["skips"] == 1
    unknown = cli("schedule", "pause", f"nope-{tag}", env=env)
    assert unknown.returncode != 0 and f"no schedule 'nope-{tag}'" in unknown.stderr


def test_occurrences_missed_are_counted_within_the_window():
    assert occurrences(10.0, None, 1000.0, 3600.0) == 1  # the first fire
    assert occurrences(10.0, 990.0, 1000.0, None) == 1  # no catch-up
    assert occurrences(10.0, 970.0, 1000.0, 3600.0) == 3
    assert occurrences(10.0, 970.0, 999.5, 3600.0) == 3  # a fire a little early
    assert occurrences(10.0, 0.0, 1000.0, 25.0) == 2  # only the window's
    hourly = crontab(minute="0")
    t0 = dt.datetime(2026, 1, 1, 10, 0, 5, tzinfo=dt.timezone.utc).timestamp()
    assert next_after(hourly, t0) == t0 - 5 + 3600
    assert occurrences(hourly, t0, t0 + 3 * 3600, 86400.0) == 3


@pytest.fixture()
@starts_processes
def beat(app, tmp_path) -> Iterator[callable]:
    """Start (and stop) a real ``celery beat`` over tests/schedule_beatapp.py."""
    procs: list[subprocess.Popen] = []
    name = f"beat-{uuid.uuid4().hex[:8]}"
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        CGTEST_REDIS_URL=app.conf.graph_redis_url,
        CGTEST_SESSION=SESSION,
        CGTEST_SCHEDULE_NAME=name,
        CGTEST_SCHEDULE_EVERY="10",
        CGTEST_SCHEDULE_TAG=name,
    )

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.schedule_beatapp",
                "beat",
                "-s",
                str(tmp_path / "beat-schedule"),
                "--max-interval",
                "1",
                "-l",
                "WARNING",
            ],
            env=env,
            cwd=ROOT,
        )
        procs.append(proc)
        return proc

    start.name = name  # type: ignore[attr-defined]
    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_beat_down_three_periods_then_back_starts_the_three_missed_runs(app, beat):
    """A real beat fires every 10 s; it stops right after a fire, stays down past three
    occurrences, and comes back: its one overdue fire starts the three runs missed."""
    name = beat.name
    state = state_for(app)
    proc = beat()
    first = wait_for(
        lambda: state.schedules.get(name) or proc.poll() is not None,
        timeout=60,
        what="beat's first fire",
    )
    assert proc.poll() is None, "beat exited"
    proc.send_signal(signal.SIGTERM)  # a clean stop: beat saves when it last fired
    proc.wait(30)
    assert first["runs"] == 1
    down_until = first["last_fire"] + 31  # three occurrences missed: +10, +20, +30
    wait_for(lambda: state.runs.time() > down_until, timeout=60, what="three periods")
    again = beat()
    back = wait_for(
        lambda: (r := state.schedules.get(name)) and r["runs"] > 1 and r,
        timeout=60,
        what="beat's fire after it came back",
    )
    again.kill()
    # the occurrences passed when it came back: three, or more when the machine is slow
    # to start a beat again (each 10 s later is one more; a second's jitter allowed, as
    # client/schedules.py's occurrences() counts them)
    missed = int((float(back["last_fire"]) - float(first["last_fire"]) + 1.0) // 10)
    assert missed >= 3, back
    assert back["runs"] == 1 + missed, back  # the first, then every missed one
    fire_key = back["fire_key"]
    catchups = [run_id_for(f"{fire_key}:catchup:{i}") for i in range(missed - 1)]
    runs = [GraphRun(r, app=app) for r in (*catchups, run_id_for(fire_key))]
    assert [r.get(timeout=60) for r in runs] == ["tick"] * missed
    created = [r.status().created for r in runs]
    assert created == sorted(created)  # oldest first
    assert read_trace(name).count("start:tick") == 4


def test_the_dashboard_lists_schedules_and_pauses_and_resumes_them(app, http, tag):
    name = f"ui-{tag}"
    entry = schedule(slow_flow(tag, 0.1), 60, {"tag": tag}, overlap="allow", name=name)
    run = GraphRun(run_of(fire(app, entry)), app=app)
    run.get(timeout=30)
    rows = {s["name"]: s for s in http.get("/api/schedules")["schedules"]}
    assert rows[name]["last_run"] == run.id and rows[name]["runs"] == 1
    assert rows[name]["every"] == "every 60 s" and rows[name]["overlap"] == "allow"
    assert http.post(f"/api/schedules/{name}/pause") == {"name": name, "paused": True}
    assert {s["name"]: s for s in http.get("/api/schedules")["schedules"]}[name]["paused"]
    assert http.post(f"/api/schedules/{name}/resume") == {"name": name, "paused": False}
    status, body = http.request("POST", f"/api/schedules/nope-{tag}/pause", {})
    assert status == 404 and "no schedule" in body["error"]
    page = http.request("GET", "/schedules")
    assert page[0] == 200
