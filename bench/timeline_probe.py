"""Loaded into a bench worker with ``-I bench.timeline_probe`` (bench/timeline.py): notes
when each message is received, each task starts and ends, each message is handed to the
broker and each begin.lua / complete.lua call starts and ends, on the clock every process
shares (``time.perf_counter``, CLOCK_MONOTONIC on Linux), and writes them to
``$BENCH_TIMELINE_DIR/<pid>.json`` when the process ends. Not for production: it wraps
two methods of celery-graph's ``Scripts``."""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any

from celery import signals

from celery_graph.state.scripts import Scripts

# (time, event, task id or None, root id or None)
EVENTS: list[tuple[float, str, str | None, str | None]] = []
_now = time.perf_counter


@signals.task_received.connect(weak=False)
def _received(request: Any = None, **_: Any) -> None:
    EVENTS.append((_now(), "received", request.id, request.root_id))


@signals.task_prerun.connect(weak=False)
def _prerun(task_id: str = "", task: Any = None, **_: Any) -> None:
    EVENTS.append((_now(), "prerun", task_id, task.request.root_id))


@signals.task_postrun.connect(weak=False)
def _postrun(task_id: str = "", task: Any = None, **_: Any) -> None:
    EVENTS.append((_now(), "postrun", task_id, task.request.root_id))


@signals.after_task_publish.connect(weak=False)
def _published(headers: Any = None, **_: Any) -> None:
    EVENTS.append((_now(), "published", headers.get("id"), headers.get("root_id")))


def _timed(name: str) -> None:
    real = getattr(Scripts, name)

    @functools.wraps(real)
    def timed(self: Scripts, *args: Any, **kwargs: Any) -> Any:
        EVENTS.append((_now(), f"{name} sent", None, None))
        try:
            return real(self, *args, **kwargs)
        finally:
            EVENTS.append((_now(), f"{name} answered", None, None))

    setattr(Scripts, name, timed)


for _name in ("begin", "complete"):
    _timed(_name)


def _write(**_: Any) -> None:
    folder = Path(os.environ["BENCH_TIMELINE_DIR"])
    (folder / f"{os.getpid()}.json").write_text(json.dumps(EVENTS))


signals.worker_process_shutdown.connect(_write, weak=False)
signals.worker_shutdown.connect(_write, weak=False)
