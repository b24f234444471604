"""A fire of a ``schedule()`` entry: overlap policies and catch-up, decided in graph state.

Beat (or django-celery-beat) fires an entry as one ``run_graph`` message whose kwargs
carry the schedule (``protocol.ScheduleSpec``). The worker that takes it decides, under
the schedule's lock and on the Redis server's clock:

- paused (``celery-graph schedule pause NAME``): nothing starts; the skip is recorded;
- the occurrences due: this one, and with ``catchup`` the ones missed since the last fire
  (beat was down), within the catch-up window, oldest first;
- for each, the overlap policy against the schedule's last run: ``allow`` starts it,
  ``skip`` starts it only when the last run has ended (else records a skip),
  ``buffer_one`` lets one run wait (queued, in the schedule's own line of one slot) behind
  the running one and skips beyond that, ``cancel_previous`` cancels the last run first;
- what happened: last fire, last run, next fire, skips.

Each occurrence's run id comes from the message's task id (and the occurrence's place
among the catch-up ones), so a redelivered fire starts nothing twice.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from celery.schedules import crontab

from ..engine.lifecycle import end_run
from ..errors import RunNotFound
from ..model import GraphSpec
from ..protocol import ScheduleSpec
from ..state import Slot, State
from .submit import submit_spec

logger = logging.getLogger("celery_graph.schedules")

ACTIVE = ("running", "queued")
LOCK_SECONDS = 60.0


def every_of(spec: ScheduleSpec, app: Any) -> Any:
    """The schedule's period as Celery knows it: seconds, or a crontab on ``app``."""
    if "seconds" in spec.every:
        return float(spec.every["seconds"])
    c = spec.every["crontab"]
    return crontab(
        minute=c["minute"],
        hour=c["hour"],
        day_of_week=c["day_of_week"],
        day_of_month=c["day_of_month"],
        month_of_year=c["month_of_year"],
        app=app,
    )


def next_after(every: Any, when: float) -> float:
    """The first occurrence after ``when`` (epoch seconds)."""
    if isinstance(every, float):
        return when + every
    start = dt.datetime.fromtimestamp(when, dt.timezone.utc)
    last, delta, _now = every.remaining_delta(start)
    nxt = (last + delta).timestamp()
    return nxt if nxt > when else next_after(every, when + 1.0)


def occurrences(every: Any, last_fire: float | None, now: float, catchup: float | None) -> int:
    """How many occurrences this fire stands for: 1, or with ``catchup`` the ones since
    ``last_fire`` (the fire itself the latest), those older than the window left out."""
    if catchup is None or last_fire is None:
        return 1
    since = max(last_fire, now - catchup)
    if isinstance(every, float):
        # a fire is recorded when a worker takes it, a little after beat sent it: allow
        # for that jitter (a quarter period, a second at most) before counting a period
        return max(1, int((now - since + min(every / 4, 1.0)) / every))
    count, t = 0, since
    while count < 10_000:
        t = next_after(every, t)
        if t > now + 1.0:
            break
        count += 1
    return max(1, count)


def fire(
    app: Any,
    state: State,
    spec: GraphSpec,
    schedule: ScheduleSpec,
    inputs: dict[str, Any],
    key: str,
    extra: dict[str, str],
) -> list[str]:
    """Decide one fire of ``schedule`` (a run_graph message with idempotency key ``key``);
    the runs it started (or queued)."""
    name = schedule.name
    # another worker may decide a fire of it now: wait for it
    lock = state.wait_lock(state.keys.schedule_lock(name), LOCK_SECONDS, LOCK_SECONDS)
    try:
        return _fire(app, state, spec, schedule, inputs, key, extra)
    finally:
        if lock is not None:
            state.unlock(lock)


def _fire(
    app: Any,
    state: State,
    spec: GraphSpec,
    schedule: ScheduleSpec,
    inputs: dict[str, Any],
    key: str,
    extra: dict[str, str],
) -> list[str]:
    name, store = schedule.name, state.schedules
    now = state.runs.time()
    every = every_of(schedule, app)
    record = store.get(name) or {}
    if record.get("fire_key") == key:  # a redelivered fire: decided already
        return []
    about = {
        "flow": extra.get("flow", ""),
        "overlap": schedule.overlap,
        "every": _every_text(schedule),
        "catchup": "" if schedule.catchup is None else repr(schedule.catchup),
        "last_fire": repr(now),
        "next_fire": repr(next_after(every, now)),
        "fire_key": key,
    }
    if record.get("paused"):
        store.record(name, {**about, "last_skip": repr(now), "skip_reason": "paused"}, skips=1)
        logger.info("celery-graph: schedule %s is paused: the fire starts nothing", name)
        return []
    due = occurrences(every, record.get("last_fire"), now, schedule.catchup)
    started: list[str] = []
    last_run = record.get("last_run") or ""
    skips = 0
    reason = ""
    for index in range(due):
        # the fire's own occurrence is the last; it alone carries the message's canvas
        own = index == due - 1
        run_id, why = _occurrence(
            app,
            state,
            spec,
            schedule,
            inputs,
            key if own else f"{key}:catchup:{index}",
            extra if own else {k: v for k, v in extra.items() if k != "continuation"},
            last_run,
        )
        if run_id is None:
            skips += 1
            reason = why
            continue
        started.append(run_id)
        last_run = run_id
    fields: dict[str, Any] = dict(about)
    if started:
        fields["last_run"] = last_run
        fields["runs"] = int(record.get("runs") or 0) + len(started)
    if skips:
        fields.update(last_skip=repr(now), skip_reason=reason)
    store.record(name, fields, skips=skips)
    if skips:
        logger.info("celery-graph: schedule %s: %d fire(s) skipped (%s)", name, skips, reason)
    return started


def _occurrence(
    app: Any,
    state: State,
    spec: GraphSpec,
    schedule: ScheduleSpec,
    inputs: dict[str, Any],
    key: str,
    extra: dict[str, str],
    last_run: str,
) -> tuple[str | None, str]:
    """Start one occurrence under the overlap policy: (its run id, "") or (None, why not)."""
    overlap = schedule.overlap
    slot = None
    if overlap == "skip" and _active(state, last_run):
        return None, f"run {last_run} still running"
    if overlap == "cancel_previous" and _active(state, last_run):
        end_run(app, state, last_run, "cancelled")
    if overlap == "buffer_one":
        slot = Slot(f"schedule:{schedule.name}", "all", 1)
        held, waiting = state.limits.counts(slot.scope, slot.group)
        if held and waiting:
            return None, "one run running and one waiting already"
    run = submit_spec(spec, inputs, app, idempotency_key=key, extra_fields=extra, slot=slot)
    return run.id, ""


def _active(state: State, run_id: str) -> bool:
    if not run_id:
        return False
    try:
        return state.runs.record(run_id).get("status") in ACTIVE
    except RunNotFound:
        return False


def _every_text(schedule: ScheduleSpec) -> str:
    if "seconds" in schedule.every:
        return f"every {schedule.every['seconds']:g} s"
    c = schedule.every["crontab"]
    return "crontab " + " ".join(
        str(c[f]) for f in ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
    )
