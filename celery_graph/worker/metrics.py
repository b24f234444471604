"""Per-worker metrics: counted in the pool processes, kept in Redis, served by the main
process in the Prometheus text format (``endpoint.py``), beside a ``/healthz`` liveness
endpoint. This module counts; it imports neither prometheus_client nor an HTTP server.

With the prefork pool a task runs in a child process, so counters cannot live in the
main process's memory. Each child adds up its tasks' counts in its own memory and adds
them to one Redis hash per worker (``P:worker:{hostname}:metrics``, see
``state/workers.py``) in one call every ``FLUSH_SECONDS`` and when the process stops
(any process does the same with the starts and ends of runs, ``P:metrics:runs``), never
one call per task: a process killed outright loses at most that last second of counts,
never a task's outcome without its count or a bucket without its histogram's count (each
batch is added in one script). The heartbeat in the main process keeps that hash alive
and the main process serves it at ``http://HOST:PORT/metrics`` together with live numbers
only it knows (in-flight tasks, uptime) and the depth of every queue the worker consumes.
``/healthz`` answers 200 while the worker's consumer runs and touches neither Redis nor
the broker.

Metric names (label ``worker`` = Celery hostname, ``task`` = task name, ``queue`` = the
queue the message came from, ``flow`` = the run's flow name, "" for none)::

    celery_graph_task_duration_seconds{worker,task,queue}   histogram of execution time
    celery_graph_tasks_total{worker,task,queue,outcome}      succeeded, failed, retried...
    celery_graph_queue_wait_seconds{worker,queue}            histogram, node sent to started
    celery_graph_worker_tasks_processed_total{worker}        tasks that ran to an end state
    celery_graph_worker_tasks_succeeded_total / _failed_total / _retried_total
    celery_graph_worker_task_runtime_seconds_total{worker}   summed execution time
    celery_graph_worker_tasks_in_flight{worker}              requests held right now
    celery_graph_worker_uptime_seconds{worker}
    celery_graph_queue_depth{queue}                          messages waiting in the broker
    celery_graph_deployment_exporter{worker}                 1 on the worker serving these:
    celery_graph_runs_started_total{flow}                    runs created (deployment-wide)
    celery_graph_runs_finished_total{flow,outcome}           succeeded, failed, cancelled
    celery_graph_run_duration_seconds{flow}                  histogram, creation to end
    celery_graph_reconciler_resent_nodes_total               nodes sent again
    celery_graph_reconciler_lost_nodes_total                 nodes whose worker died
    celery_graph_reconciler_reclaimed_leases_total           leases that ran out, acted on
    celery_graph_signals_total                               signals to wait_for() nodes
    celery_graph_wait_timeouts_total                         waits that timed out
    celery_graph_child_runs_total                            child runs started by child()
    celery_graph_steps_total{kind,outcome}                   handlers and compensations

The deployment-wide figures count every run under the key prefix, whichever process
started or ended it, and one worker serves them (the holder of the exporter lease,
``WorkerStore.claim_exporter``): summed over workers, each run counts once.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from typing import Any

from celery.signals import task_postrun, task_prerun, worker_process_shutdown, worker_shutdown

from ..config import registry_ttl
from ..errors import StoreUnavailable
from ..signals import run_finished, run_started
from ..state import State, run_counts, state_for, task_counts

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

# Upper bounds (seconds) of the queue-wait histogram's buckets (sent to started).
QUEUE_WAIT_BUCKETS = (
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)

# task_postrun's ``state`` -> the outcome label
_OUTCOME = {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried"}

# seconds between two additions of a process's task counts to Redis
FLUSH_SECONDS = 1.0

_started: dict[str, float] = {}
_installed = False
_lock = threading.Lock()


_Pending = dict[tuple[int, str], tuple[State, dict[str, int], dict[str, float]]]


class Tally:
    """Counts of this process not yet in Redis, by (state, hostname) for a worker's task
    counters and (state, "") for the run counters, added to Redis in one call per hash
    every ``FLUSH_SECONDS`` by one daemon thread (started on first use and again in a
    forked child), and when the process exits."""

    def __init__(self) -> None:
        self._pending: _Pending = {}
        self._lock = threading.Lock()
        self._writing = threading.Lock()  # held from taking the counts to their write
        self._pid = 0
        self._wake = threading.Event()
        self._exit_hook = False

    def add(
        self, state: State, hostname: str, whole: dict[str, int], floats: dict[str, float]
    ) -> None:
        """Add to the task counters of worker ``hostname``, or to the run counters ("")."""
        with self._lock:
            _, w, f = self._pending.setdefault((id(state), hostname), (state, {}, {}))
            for k, v in whole.items():
                w[k] = w.get(k, 0) + v
            for k, x in floats.items():
                f[k] = f.get(k, 0.0) + x
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="celery-graph-metrics", daemon=True).start()
                if not self._exit_hook:  # a client process that submits and exits
                    atexit.register(self.flush)
                    self._exit_hook = True

    def _run(self) -> None:
        pid = os.getpid()
        while self._pid == pid:
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Add every pending count to Redis now, and return once the counts a flush in
        another thread took are written too (a batch Redis refuses is dropped, with a
        warning: metrics never hold a task up)."""
        with self._writing:
            with self._lock:
                pending, self._pending = self._pending, {}
            self._write(pending)

    @staticmethod
    def _write(pending: _Pending) -> None:
        for (_, hostname), (state, whole, floats) in pending.items():
            try:
                if hostname:
                    state.workers.add_task_counts(hostname, whole, floats, registry_ttl())
                else:
                    state.workers.add_run_counts(whole, floats, state.settings.run_ttl)
            except StoreUnavailable as exc:  # the graph Redis away (or gone at exit): one line
                logger.warning("celery-graph: could not record task metrics: %s", exc)
            except Exception:
                logger.warning("celery-graph: could not record task metrics", exc_info=True)

    def reset(self) -> None:
        """In a forked child: a lock of its own (the parent's flushing thread may hold the
        copied one) and none of the parent's counts (the parent writes them)."""
        self._lock = threading.Lock()
        self._writing = threading.Lock()
        self._wake = threading.Event()
        self._pending = {}
        self._pid = 0


tally = Tally()
os.register_at_fork(after_in_child=tally.reset)


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
        whole, floats = task_counts(
            task.name,
            _queue_of(task.request),
            _OUTCOME.get(state or "", (state or "unknown").lower()),
            None if began is None else time.monotonic() - began,
            TASK_DURATION_BUCKETS,
            waited=getattr(task.request, "graph_waited", None),
            wait_buckets=QUEUE_WAIT_BUCKETS,
        )
        tally.add(state_for(task.app), hostname, whole, floats)
    except Exception:  # metrics must never fail a task
        logger.warning("celery-graph: could not record task metrics", exc_info=True)


def _on_process_shutdown(**_: Any) -> None:
    tally.flush()


def install_task_signals() -> None:
    """Count tasks in this process and in every pool process forked from it."""
    global _installed
    with _lock:
        if _installed:
            return
        task_prerun.connect(_on_prerun, weak=False, dispatch_uid="celery_graph.metrics.pre")
        task_postrun.connect(_on_postrun, weak=False, dispatch_uid="celery_graph.metrics.post")
        for stopping in (worker_process_shutdown, worker_shutdown):
            stopping.connect(
                _on_process_shutdown, weak=False, dispatch_uid="celery_graph.metrics.flush"
            )
        _installed = True


def _on_run_started(state: State | None = None, flow: str | None = None, **_: Any) -> None:
    if state is None:
        return
    tally.add(state, "", *run_counts("started", None, RUN_DURATION_BUCKETS, flow or ""))


def _on_run_finished(
    state: State | None = None, run_id: str = "", record: Any = None, **_: Any
) -> None:
    if state is None:
        return
    try:
        record = record or state.runs.record(run_id)
        duration = None
        if record.get("created") and record.get("finished"):  # both the server's time
            duration = max(0.0, float(record["finished"]) - float(record["created"]))
        event = record.get("status", "unknown")
        flow = record.get("flow", "")
        tally.add(state, "", *run_counts(event, duration, RUN_DURATION_BUCKETS, flow))
    except Exception:
        logger.warning("celery-graph: could not count the end of run %s", run_id, exc_info=True)


run_started.connect(_on_run_started, weak=False, dispatch_uid="celery_graph.metrics.run_start")
run_finished.connect(_on_run_finished, weak=False, dispatch_uid="celery_graph.metrics.run_end")
