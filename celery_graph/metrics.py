"""Per-worker metrics: counted in the pool processes, kept in Redis, served by the main
process in the Prometheus text format.

With the prefork pool a task runs in a child process, so counters cannot live in the
main process's memory. Each child adds to one Redis hash per worker
(``P:worker:<hostname>:metrics``, see ``state/workers.py``); the heartbeat in the main process keeps
that hash alive and the main process serves it at ``http://HOST:PORT/metrics`` together
with live numbers only it knows (in-flight tasks, uptime) and the depth of every queue
the worker consumes.

Metric names (label ``worker`` = Celery hostname, ``queue`` = queue name)::

    celery_graph_worker_tasks_processed_total     tasks that ran to an end state
    celery_graph_worker_tasks_succeeded_total
    celery_graph_worker_tasks_failed_total
    celery_graph_worker_tasks_retried_total
    celery_graph_worker_task_runtime_seconds_total    summed execution time
    celery_graph_worker_task_runtime_seconds_mean     total / processed
    celery_graph_worker_tasks_in_flight           requests the worker holds right now
    celery_graph_worker_uptime_seconds
    celery_graph_queue_depth{queue=...}           messages waiting in the broker queue
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from celery.signals import task_postrun, task_prerun
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .config import registry_ttl
from .dispatch import QueueDepth
from .state import State, state_for

logger = logging.getLogger("celery_graph.metrics")

# task_postrun's ``state`` -> the counter it bumps besides "processed"
_STATE_COUNTER = {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried"}

_started: dict[str, float] = {}
_installed = False
_lock = threading.Lock()


# -- counting, in whichever process runs the task ---------------------------------------


def _on_prerun(task_id: str | None = None, **_: Any) -> None:
    if task_id:
        _started[task_id] = time.monotonic()


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
            _STATE_COUNTER.get(state or ""),
            None if began is None else time.monotonic() - began,
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


# -- exposing, in the worker's main process ------------------------------------------


class WorkerCollector:
    """A prometheus_client collector reading one worker's numbers at scrape time."""

    def __init__(
        self,
        state: State,
        hostname: str,
        started: float,
        queues: Callable[[], list[str]],
        in_flight: Callable[[], int],
        depth: QueueDepth | None,
    ) -> None:
        self.workers = state.workers
        self.hostname = hostname
        self.started = started
        self.queues = queues
        self.in_flight = in_flight
        self.depth = depth

    def collect(self) -> Iterator[Any]:
        m = self.workers.counters(self.hostname)
        labels = ["worker"]
        host = [self.hostname]
        for name, field, doc in (
            ("tasks_processed", "processed", "Tasks that ran to an end state"),
            ("tasks_succeeded", "succeeded", "Tasks that returned"),
            ("tasks_failed", "failed", "Tasks that raised"),
            ("tasks_retried", "retried", "Tasks that asked for a retry"),
            ("task_runtime_seconds", "runtime_total", "Summed task execution time"),
        ):
            c = CounterMetricFamily(f"celery_graph_worker_{name}", doc, labels=labels)
            c.add_metric(host, m.get(field, 0.0))
            yield c
        processed = m.get("processed", 0.0)
        mean = GaugeMetricFamily(
            "celery_graph_worker_task_runtime_seconds_mean",
            "Mean task execution time",
            labels=labels,
        )
        mean.add_metric(host, m.get("runtime_total", 0.0) / processed if processed else 0.0)
        yield mean
        g = GaugeMetricFamily(
            "celery_graph_worker_tasks_in_flight", "Tasks the worker holds now", labels=labels
        )
        g.add_metric(host, self.in_flight())
        yield g
        up = GaugeMetricFamily(
            "celery_graph_worker_uptime_seconds", "Seconds since the worker started",
            labels=labels,
        )
        up.add_metric(host, time.time() - self.started)
        yield up
        if self.depth is not None:
            qd = GaugeMetricFamily(
                "celery_graph_queue_depth",
                "Messages waiting in the broker queue",
                labels=["queue"],
            )
            try:
                for q, n in sorted(self.depth.depths(self.queues()).items()):
                    qd.add_metric([q], n)
            except Exception:
                logger.warning("celery-graph: could not read queue depth", exc_info=True)
            yield qd


class MetricsServer:
    """The /metrics HTTP endpoint of one worker (prometheus_client's server)."""

    def __init__(self, collector: WorkerCollector, port: int, addr: str = "0.0.0.0") -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.port = port
        self.addr = addr
        self._server: Any = None

    def start(self) -> None:
        server, _thread = start_http_server(self.port, addr=self.addr, registry=self.registry)
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
