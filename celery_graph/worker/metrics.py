"""Per-worker metrics: counted in the pool processes, kept in Redis, served by the main
process in the Prometheus text format, beside a ``/healthz`` liveness endpoint.

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
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from celery.signals import task_postrun, task_prerun
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from ..config import RUN_DURATION_BUCKETS, TASK_DURATION_BUCKETS, registry_ttl
from ..dispatch import QueueDepth
from ..errors import ConfigurationError
from ..signals import run_finished, run_started
from ..state import State, state_for

logger = logging.getLogger("celery_graph.metrics")

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


# -- exposing, in the worker's main process ------------------------------------------


def _buckets(counts: dict[str, float], bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    """Prometheus buckets (cumulative, ``+Inf`` last) from stored counts by label."""
    out = []
    for le in bounds:
        label = repr(float(le))
        out.append((label, counts.get(label, 0.0)))
    out.append(("+Inf", counts.get("+Inf", 0.0)))
    return out


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
        self.started = started  # time.monotonic() at start
        self.queues = queues
        self.in_flight = in_flight
        self.depth = depth

    def collect(self) -> Iterator[Any]:
        m = self.workers.counters(self.hostname)
        yield from self._per_task(m)
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
        g = GaugeMetricFamily(
            "celery_graph_worker_tasks_in_flight", "Tasks the worker holds now", labels=labels
        )
        g.add_metric(host, self.in_flight())
        yield g
        up = GaugeMetricFamily(
            "celery_graph_worker_uptime_seconds",
            "Seconds since the worker started",
            labels=labels,
        )
        up.add_metric(host, time.monotonic() - self.started)
        yield up
        yield from self._runs()
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

    def _per_task(self, m: dict[str, float]) -> Iterator[Any]:
        outcomes = CounterMetricFamily(
            "celery_graph_tasks",
            "Tasks that ran to an end state, by outcome",
            labels=["worker", "task", "queue", "outcome"],
        )
        sums: dict[tuple[str, str], float] = {}
        buckets: dict[tuple[str, str], dict[str, float]] = {}
        for field, value in m.items():
            kind, _, rest = field.partition("|")
            if kind == "n":
                task, queue, outcome = rest.rsplit("|", 2)
                outcomes.add_metric([self.hostname, task, queue, outcome], value)
            elif kind == "s":
                task, queue = rest.rsplit("|", 1)
                sums[(task, queue)] = value
            elif kind == "b":
                task, queue, le = rest.rsplit("|", 2)
                buckets.setdefault((task, queue), {})[le] = value
        yield outcomes
        hist = HistogramMetricFamily(
            "celery_graph_task_duration_seconds",
            "Task execution time",
            labels=["worker", "task", "queue"],
        )
        for (task, queue), counts in sorted(buckets.items()):
            hist.add_metric(
                [self.hostname, task, queue],
                _buckets(counts, TASK_DURATION_BUCKETS),
                sums.get((task, queue), 0.0),
            )
        yield hist

    def _runs(self) -> Iterator[Any]:
        r = self.workers.run_counters()
        started = CounterMetricFamily("celery_graph_runs_started", "Runs created")
        started.add_metric([], r.get("started", 0.0))
        yield started
        finished = CounterMetricFamily(
            "celery_graph_runs_finished", "Runs that ended, by outcome", labels=["outcome"]
        )
        for outcome in ("succeeded", "failed", "cancelled"):
            finished.add_metric([outcome], r.get(outcome, 0.0))
        yield finished
        counts = {k[2:]: v for k, v in r.items() if k.startswith("b|")}
        hist = HistogramMetricFamily(
            "celery_graph_run_duration_seconds", "Run duration, from creation to its end"
        )
        hist.add_metric([], _buckets(counts, RUN_DURATION_BUCKETS), r.get("s", 0.0))
        yield hist


class MetricsServer:
    """One worker's HTTP endpoint: ``/metrics`` (Prometheus) and ``/healthz`` (liveness,
    no Redis). ``start()`` raises ConfigurationError, naming the address, when the port
    cannot be bound (already in use)."""

    def __init__(
        self,
        collector: Any,
        port: int,
        addr: str = "0.0.0.0",
        healthy: Callable[[], bool] = lambda: True,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.port = port
        self.addr = addr
        self.healthy = healthy
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        registry, healthy = self.registry, self.healthy

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    ok = healthy()
                    self._reply(
                        200 if ok else 503,
                        b"ok\n" if ok else b"stopped\n",
                        "text/plain; charset=utf-8",
                    )
                elif path == "/metrics":
                    try:
                        body = generate_latest(registry)
                    except Exception as exc:  # Redis down: say so, do not hang
                        self._reply(
                            503,
                            f"metrics unavailable: {exc}\n".encode(),
                            "text/plain; charset=utf-8",
                        )
                        return
                    self._reply(200, body, CONTENT_TYPE_LATEST)
                else:
                    self._reply(
                        404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8"
                    )

            def _reply(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds would flood the worker log

        try:
            server = ThreadingHTTPServer((self.addr, self.port), Handler)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve metrics on {self.addr}:{self.port}: {exc.strerror or exc} "
                "(another worker on this host uses that port? give each worker its own "
                "--metrics-port)"
            ) from exc
        server.daemon_threads = True
        threading.Thread(
            target=server.serve_forever, name="celery-graph-metrics", daemon=True
        ).start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
