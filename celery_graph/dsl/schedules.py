"""``schedule()``: a flow as a Celery beat entry with an overlap policy and catch-up."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from celery.schedules import crontab

from ..client import graph_signature
from ..protocol import CRONTAB_FIELDS, OVERLAPS, RUN_GRAPH, ScheduleSpec
from .values import Flow, check_flow_name


def schedule(
    flow: Flow[Any],
    every: float | dt.timedelta | crontab,
    inputs: dict[str, Any] | None = None,
    overlap: str = "skip",
    catchup: dt.timedelta | float | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """A Celery beat entry that runs ``flow`` with ``inputs`` ``every`` seconds, timedelta or
    ``crontab``; put it in ``beat_schedule`` (or its task and kwargs in a django-celery-beat
    row, docs/scheduling.md)::

        app.conf.beat_schedule = {
            "nightly": schedule(etl, crontab(hour=2, minute=0), overlap="skip"),
        }

    ``overlap``, enforced in graph state when the entry fires: ``skip`` (the previous run
    still going: start nothing, count a skip), ``buffer_one`` (let one run wait for it,
    skip beyond that), ``allow`` (start anyway), ``cancel_previous`` (cancel it, then
    start). ``catchup``: when beat comes back after missing occurrences, start those missed
    within this window once each, oldest first. ``name``: the schedule's name for
    ``celery-graph schedules`` and ``schedule pause|resume NAME`` (default: the flow's
    name). Bad values raise here, before anything is stored."""
    if not isinstance(flow, Flow):
        raise TypeError(f"schedule() takes a celery-graph flow, got a {type(flow).__name__}")
    if overlap not in OVERLAPS:
        raise ValueError(f"schedule(overlap={overlap!r}): use one of {', '.join(OVERLAPS)}")
    label = name if name is not None else flow.flow_name
    if label is None:
        raise ValueError(
            "schedule() of a flow without a name needs name=...: the name celery-graph "
            "schedules lists and schedule pause|resume takes"
        )
    label = check_flow_name(label)
    spec = flow.compile()
    if overlap == "buffer_one" and spec.concurrency is not None:
        raise ValueError(
            f"schedule {label!r}: overlap='buffer_one' waits in the schedule's own line, and "
            "this flow has a concurrency limit of its own (with_concurrency): use "
            "overlap='skip' or 'allow'"
        )
    entry_every, every_data = _every(every, label)
    window = _catchup(catchup, label)
    data = dict(inputs or {})
    spec.check_known_inputs(data)
    spec.check_inputs(data)
    sched = ScheduleSpec(label, overlap, every_data, window)
    sig = graph_signature(spec, data, flow_name=flow.flow_name, schedule=sched)
    return {"task": RUN_GRAPH, "schedule": entry_every, "args": (), "kwargs": dict(sig.kwargs)}


def _every(every: Any, label: str) -> tuple[Any, dict[str, Any]]:
    if isinstance(every, crontab):
        _cls, fields, _state = every.__reduce__()
        return every, {"crontab": dict(zip(CRONTAB_FIELDS, (str(f) for f in fields)))}
    seconds = every.total_seconds() if isinstance(every, dt.timedelta) else every
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(
            f"schedule {label!r}: every must be seconds, a timedelta or a crontab, got "
            f"{type(every).__name__}"
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"schedule {label!r}: every must be a positive period, got {every!r}")
    return every, {"seconds": float(seconds)}


def _catchup(catchup: Any, label: str) -> float | None:
    if catchup is None:
        return None
    seconds = catchup.total_seconds() if isinstance(catchup, dt.timedelta) else catchup
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        raise ValueError(
            f"schedule {label!r}: catchup must be a positive timedelta (the window of missed "
            f"occurrences to start), got {catchup!r}"
        )
    return float(seconds)
