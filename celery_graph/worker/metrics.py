"""Per-worker metrics: counted in the pool processes, kept in Redis, served by the main
process in the Prometheus text format (``endpoint.py``), beside a ``/healthz`` liveness
endpoint. This module counts; it imports neither prometheus_client nor an HTTP server.

With the prefork pool a task runs in a child process, so counters cannot live in the
main process's memory. Each child adds to one Redis hash per worker
(``P:worker:{hostname}:metrics``, see ``state/workers.py``); the heartbeat in the main
process keeps that hash alive and the main process serves it at
``http://HOST:PORT/metrics`` together with live numbers only it knows (in-flight tasks,
uptime) and the depth of every queue the worker consumes. ``/healthz`` answers 200 while
the worker's consumer runs and touches neither Redis nor the broker.

Metric names (label ``worker`` = Celery hostname, ``task`` = task name, ``queue`` = the
queue the message came from)::

    celery_graph_task_duration_seconds{worker,task,queue}   histogram of execution time
    celery_graph_tasks_total{worker,task,queue,outcome}      succeeded, failed, retried...
    celery_graph_worker_tasks_processed_total{worker}        tasks that ran to an end state
    celery_graph_worker_tasks_succeeded_total / _failed_total / _retried_total
    celery_graph_worker_task_runtime_seconds_total{worker}   summed execution time
    celery_graph_worker_tasks_in_flight{worker}              requests held right now
    celery_graph_worker_uptime_seconds{worker}
    celery_graph_queue_depth{queue}                          messages waiting in the broker
    celery_graph_runs_started_total                          runs created (cluster-wide)
    celery_graph_runs_finished_total{outcome}                succeeded, failed, cancelled
    celery_graph_run_duration_seconds                        histogram, creation to end

The run metrics count every run under the key prefix, whichever process started or
ended it: every worker serves the same numbers (aggregate them with ``max``, not
``sum``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery.signals import task_postrun, task_prerun

from ..config import registry_ttl
from ..signals import run_finished, run_started
from ..state import State, state_for

logger = logging.getLogger("celery_graph.metrics")

# Upper bounds (seconds) of the node- and run-duration histograms' buckets.
TASK_DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
)
RUN_DURATION_BUCKETS = (
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    21600.0,
    86400.0,
)

# task_postrun's ``state`` -> the outcome label
_OUTCOME = {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried"}

_started: dict[str, float] = {}
_installed = False
_lock = threading.Lock()


# -- counting, in whichever process runs the task ---------------------------------------


def _on_prerun(task_id: str | None = None, **_: Any) -> None:
    if task_id:
        _started[task_id] = time.monotonic()


def _queue_of(request: Any) -> str:
    info = getattr(request, "delivery_info", None) or {}
    return str(info.get("routing_key") or info.get("exchange") or "")


def _on_postrun(
    task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any
) -> None:
    began = _started.pop(task_id, None) if task_id else None
    if task is None:
        return
    try:
        hostname = task.request.hostname
        if not hostname:
            return
        state_for(task.app).workers.count_task(
            hostname,
            task.name,
            _queue_of(task.request),
            _OUTCOME.get(state or "", (state or "unknown").lower()),
            None if began is None else time.monotonic() - began,
            TASK_DURATION_BUCKETS,
            registry_ttl(),
        )
    except Exception:  # metrics must never fail a task
        logger.warning("celery-graph: could not record task metrics", exc_info=True)


def install_task_signals() -> None:
    """Count tasks in this process and in every pool process forked from it."""
    global _installed
    with _lock:
        if _installed:
            return
        task_prerun.connect(_on_prerun, weak=False, dispatch_uid="celery_graph.metrics.pre")
        task_postrun.connect(_on_postrun, weak=False, dispatch_uid="celery_graph.metrics.post")
        _installed = True


def _on_run_started(state: State | None = None, **_: Any) -> None:
    if state is None:
        return
    try:
        state.workers.count_run("started", None, RUN_DURATION_BUCKETS, state.settings.run_ttl)
    except Exception:
        logger.warning("celery-graph: could not count a started run", exc_info=True)


def _on_run_finished(state: State | None = None, run_id: str = "", **_: Any) -> None:
    if state is None:
        return
    try:
        record = state.runs.record(run_id)
        duration = None
        if record.get("created") and record.get("finished"):  # both the server's time
            duration = max(0.0, float(record["finished"]) - float(record["created"]))
        state.workers.count_run(
            record.get("status", "unknown"), duration, RUN_DURATION_BUCKETS, state.settings.run_ttl
        )
    except Exception:
        logger.warning("celery-graph: could not count the end of run %s", run_id, exc_info=True)


run_started.connect(_on_run_started, weak=False, dispatch_uid="celery_graph.metrics.run_start")
run_finished.connect(_on_run_finished, weak=False, dispatch_uid="celery_graph.metrics.run_end")
