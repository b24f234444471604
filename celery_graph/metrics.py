"""Per-worker metrics: counted in the pool processes, kept in Redis, served by the main
process in the Prometheus text format.

With the prefork pool a task runs in a child process, so counters cannot live in the
main process's memory. Each child adds to one Redis hash per worker with HINCRBY
(``P:worker:<hostname>:metrics``, see keys.py); the heartbeat in the main process keeps
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

import redis
from celery.signals import task_postrun, task_prerun

from .registry import TTL_INTERVALS, heartbeat_interval

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
        from .runtime import engine_for

        engine = engine_for(task.app)
        hostname = task.request.hostname
        if not hostname:
            return
        key = engine.keys.worker_metrics(hostname)
        # MULTI/EXEC: a scrape never sees "processed" without its outcome counter
        pipe = engine.client.pipeline(transaction=True)
        pipe.hincrby(key, "processed", 1)
        counter = _STATE_COUNTER.get(state or "")
        if counter:
            pipe.hincrby(key, counter, 1)
        if began is not None:
            pipe.hincrbyfloat(key, "runtime_total", time.monotonic() - began)
        pipe.expire(key, round(heartbeat_interval() * TTL_INTERVALS))
        pipe.execute()
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


# -- queue depth --------------------------------------------------------------------


class QueueDepth:
    """Messages waiting in broker queues. On Redis this is LLEN of the queue's lists
    (one per priority step when priorities are on); elsewhere a passive queue declare."""

    def __init__(self, app: Any) -> None:
        self.app = app
        conn = app.connection_for_read()
        self.transport = conn.transport_cls
        self.url = conn.as_uri(include_password=True)
        conn.release()
        self._client: redis.Redis | None = None
        self._connection: Any = None
        opts = app.conf.broker_transport_options or {}
        self.prefix = opts.get("global_keyprefix", "")
        from kombu.transport.redis import PRIORITY_STEPS, Channel

        self.steps = opts.get("priority_steps", PRIORITY_STEPS)
        self.sep = Channel.sep

    @property
    def is_redis(self) -> bool:
        return self.transport in ("redis", "rediss")

    def _redis_lists(self, queue: str) -> list[str]:
        names = [queue] + [f"{queue}{self.sep}{p}" for p in self.steps if p]
        return [self.prefix + n for n in names]

    def depths(self, queues: list[str]) -> dict[str, int]:
        if not queues:
            return {}
        if self.is_redis:
            if self._client is None:
                self._client = redis.Redis.from_url(
                    self.url, socket_timeout=5, socket_connect_timeout=5
                )
            pipe = self._client.pipeline(transaction=False)
            for q in queues:
                for name in self._redis_lists(q):
                    pipe.llen(name)
            sizes = pipe.execute()
            per = 1 + sum(1 for p in self.steps if p)
            return {q: int(sum(sizes[i * per : (i + 1) * per])) for i, q in enumerate(queues)}
        return {q: self._declared_size(q) for q in queues}

    def _declared_size(self, queue: str) -> int:
        if self._connection is None:
            self._connection = self.app.connection_for_read()
        conn = self._connection
        try:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
        except conn.channel_errors:
            # the queue does not exist yet (404 closes the channel): nothing is waiting
            return 0
        except conn.connection_errors:
            # broker unreachable: report no number rather than a misleading zero
            conn.release()
            self._connection = None
            raise


# -- exposing, in the worker's main process ------------------------------------------


class WorkerCollector:
    """A prometheus_client collector reading one worker's numbers at scrape time."""

    def __init__(
        self,
        client: redis.Redis,
        metrics_key: str,
        hostname: str,
        started: float,
        queues: Callable[[], list[str]],
        in_flight: Callable[[], int],
        depth: QueueDepth | None,
    ) -> None:
        self.client = client
        self.metrics_key = metrics_key
        self.hostname = hostname
        self.started = started
        self.queues = queues
        self.in_flight = in_flight
        self.depth = depth

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        raw = self.client.hgetall(self.metrics_key)
        m = {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}
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
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.port = port
        self.addr = addr
        self._server: Any = None

    def start(self) -> None:
        from prometheus_client import start_http_server

        server, _thread = start_http_server(self.port, addr=self.addr, registry=self.registry)
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
