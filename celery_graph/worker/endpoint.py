"""One worker's HTTP endpoint, in its main process: ``/metrics`` in the Prometheus text
format (the counters ``metrics.py`` keeps in Redis, read at scrape time, with the numbers
only the main process knows: in-flight tasks, uptime, the depth of every queue it
consumes) and ``/healthz``, which answers 200 while the worker's consumer runs and touches
neither Redis nor the broker. Started by the bootstep (``step.py``) with ``--metrics-port``,
on 127.0.0.1 unless ``--metrics-host`` says otherwise; a few threads serve it, each
request within a deadline (see :class:`MetricsServer`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import choose_encoder

from ..config import DEFAULT_METRICS_HOST
from ..dispatch import QueueDepth
from ..errors import ConfigurationError
from ..state import State
from .metrics import QUEUE_WAIT_BUCKETS, RUN_DURATION_BUCKETS, TASK_DURATION_BUCKETS

logger = logging.getLogger("celery_graph.metrics")

TEXT = "text/plain; charset=utf-8"
EXPORTER_TTL = 60  # seconds the deployment-wide metrics stay with a worker no longer scraped
# what the reconciler counts (state/workers.py, fields "r|<what>") -> metric, help
RECONCILER = (
    ("resent", "celery_graph_reconciler_resent_nodes", "Nodes the reconciler sent again"),
    (
        "lost",
        "celery_graph_reconciler_lost_nodes",
        "Nodes whose worker was lost while running them",
    ),
    (
        "reclaimed",
        "celery_graph_reconciler_reclaimed_leases",
        "Leases that ran out and that the reconciler acted on",
    ),
)
MAX_HEAD = 16 * 1024  # bytes of a request's line and headers
BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
    b"Retry-After: 1\r\n\r\nbusy\n"
)


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
        exporter_ttl: int = EXPORTER_TTL,
    ) -> None:
        self.workers = state.workers
        self.exporter_ttl = exporter_ttl
        self.hostname = hostname
        self.started = started  # time.monotonic() at start
        self.queues = queues
        self.in_flight = in_flight
        self.depth = depth

    def release(self) -> None:
        """The worker stops: another may serve the deployment-wide figures at once."""
        self.workers.release_exporter(self.hostname)

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
        # deployment-wide figures: served by one worker only (the one holding the
        # exporter lease), so sum() and rate() over all workers count each run once
        exporter = self.workers.claim_exporter(self.hostname, self.exporter_ttl)
        ex = GaugeMetricFamily(
            "celery_graph_deployment_exporter",
            "1 on the one worker that serves the deployment-wide metrics (runs, reconciler)",
            labels=labels,
        )
        ex.add_metric(host, 1.0 if exporter else 0.0)
        yield ex
        if exporter:
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
        wait_sums: dict[str, float] = {}
        waits: dict[str, dict[str, float]] = {}
        for field, value in m.items():
            kind, _, rest = field.partition("|")
            if kind == "ws":
                wait_sums[rest] = value
            elif kind == "wb":
                queue, le = rest.rsplit("|", 1)
                waits.setdefault(queue, {})[le] = value
            elif kind == "n":
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
        wait = HistogramMetricFamily(
            "celery_graph_queue_wait_seconds",
            "Time a node waited in its queue: sent (or sent again) to started, server time",
            labels=["worker", "queue"],
        )
        for queue, counts in sorted(waits.items()):
            wait.add_metric(
                [self.hostname, queue],
                _buckets(counts, QUEUE_WAIT_BUCKETS),
                wait_sums.get(queue, 0.0),
            )
        yield wait

    def _runs(self) -> Iterator[Any]:
        r = self.workers.run_counters()
        started = CounterMetricFamily(
            "celery_graph_runs_started", "Runs created, by flow", labels=["flow"]
        )
        finished = CounterMetricFamily(
            "celery_graph_runs_finished",
            "Runs that ended, by flow and outcome",
            labels=["flow", "outcome"],
        )
        hist = HistogramMetricFamily(
            "celery_graph_run_duration_seconds",
            "Run duration, from creation to its end, by flow",
            labels=["flow"],
        )
        flows: dict[str, dict[str, float]] = {}
        for field, value in r.items():
            if field.startswith("f|"):
                flow, _, what = field[2:].rpartition("|")
                if flow.endswith("|b"):  # "f|<flow>|b|<le>"
                    flow, what = flow[:-2], "b|" + what
                flows.setdefault(flow, {})[what] = value
        for flow, counts in sorted(flows.items()):
            started.add_metric([flow], counts.get("started", 0.0))
            for outcome in ("succeeded", "failed", "cancelled"):
                finished.add_metric([flow, outcome], counts.get(outcome, 0.0))
            bounds = {k[2:]: v for k, v in counts.items() if k.startswith("b|")}
            hist.add_metric([flow], _buckets(bounds, RUN_DURATION_BUCKETS), counts.get("s", 0.0))
        yield started
        yield finished
        yield hist
        for what, name, doc in RECONCILER:
            c = CounterMetricFamily(name, doc)
            c.add_metric([], r.get(f"r|{what}", 0.0))
            yield c
        yield from _semantics(r)


def _semantics(r: dict[str, float]) -> Iterator[Any]:
    """Signals, wait timeouts, child runs, handlers and compensations (run counters)."""
    for name, field, doc in (
        ("celery_graph_signals", "signals", "Signals delivered to wait_for() nodes"),
        ("celery_graph_wait_timeouts", "wait_timeouts", "wait_for() nodes that timed out"),
        ("celery_graph_child_runs", "children", "Child runs started by child()"),
    ):
        family = CounterMetricFamily(name, doc)
        family.add_metric([], r.get(field, 0.0))
        yield family
    steps = CounterMetricFamily(
        "celery_graph_steps",
        "Handlers and compensations that ended, by kind (failure: on_failure, exit: "
        "on_exit, undo: a compensation) and outcome",
        labels=["kind", "outcome"],
    )
    for key, value in sorted(r.items()):
        if key.startswith("step|"):
            _, kind, outcome = key.split("|", 2)
            steps.add_metric([kind, outcome], value)
    yield steps


class _Handler(BaseHTTPRequestHandler):
    """One request per connection (HTTP/1.0), its head read within the server's deadline
    and at most ``MAX_HEAD`` bytes; a client too slow or too large is dropped."""

    server: _BoundedServer

    def handle(self) -> None:
        head = _read_head(self.connection, self.server.deadline)
        if head is None:
            self.close_connection = True
            return
        self.rfile = io.BytesIO(head)
        self.handle_one_request()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            ok = self.server.healthy()
            self._reply(200 if ok else 503, b"ok\n" if ok else b"stopped\n", TEXT)
        elif path == "/metrics":
            # the exposition format the scraper asks for: OpenMetrics when its Accept
            # header names it (Prometheus does), else the classic text format
            encode, ctype = choose_encoder(self.headers.get("Accept", ""))
            try:
                body = encode(self.server.registry)
            except Exception as exc:  # Redis down: say so, do not hang
                self._reply(503, f"metrics unavailable: {exc}\n".encode(), TEXT)
                return
            self._reply(200, body, ctype)
        else:
            self._reply(404, b"not found: try /metrics or /healthz\n", TEXT)

    def _reply(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would flood the worker log


def _read_head(sock: socket.socket, deadline: float) -> bytes | None:
    """The request line and headers, read within ``deadline`` seconds in all; None for
    a client that is slower, sends more than MAX_HEAD bytes, or goes away."""
    ends = time.monotonic() + deadline
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        left = ends - time.monotonic()
        if left <= 0 or len(head) > MAX_HEAD:
            return None
        sock.settimeout(left)
        try:
            chunk = sock.recv(4096)
        except OSError:  # a timeout included
            return None
        if not chunk:
            return None
        head += chunk
    sock.settimeout(deadline)  # for writing the answer
    return head


class _BoundedServer(ThreadingHTTPServer):
    """At most ``threads`` connections are served at once, each for at most
    ``deadline`` seconds; one more is answered 503 at once, without a thread."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        healthy: Callable[[], bool],
        threads: int,
        deadline: float,
    ) -> None:
        super().__init__(address, _Handler)
        self.registry = registry
        self.healthy = healthy
        self.deadline = deadline
        self._slots = threading.BoundedSemaphore(threads)
        self.turned_away = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.turned_away += 1
            with contextlib.suppress(OSError):
                request.setblocking(False)
                request.send(BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # a thread serves it
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MetricsServer:
    """One worker's HTTP endpoint: ``/metrics`` (Prometheus) and ``/healthz`` (liveness,
    no Redis). Bound to loopback unless told otherwise (``--metrics-host 0.0.0.0``);
    serves at most ``threads`` requests at once, each within ``deadline`` seconds (a
    client that holds a connection open without asking gets nothing more), and answers
    503 beyond that. ``start()`` raises ConfigurationError, naming the address, when the
    port cannot be bound (already in use)."""

    def __init__(
        self,
        collector: Any,
        port: int,
        addr: str = DEFAULT_METRICS_HOST,
        healthy: Callable[[], bool] = lambda: True,
        *,
        threads: int = 4,
        deadline: float = 5.0,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.collector = collector
        self.port = port
        self.addr = addr
        self.healthy = healthy
        self.threads = threads
        self.deadline = deadline
        self._server: _BoundedServer | None = None

    def start(self) -> None:
        try:
            server = _BoundedServer(
                (self.addr, self.port), self.registry, self.healthy, self.threads, self.deadline
            )
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve metrics on {self.addr}:{self.port}: {exc.strerror or exc} "
                "(another worker on this host uses that port? give each worker its own "
                "--metrics-port)"
            ) from exc
        self.port = server.server_address[1]
        threading.Thread(
            target=server.serve_forever, name="celery-graph-metrics", daemon=True
        ).start()
        self._server = server

    @property
    def address(self) -> tuple[str, int] | None:
        """The address served on, while serving."""
        return self._server.server_address[:2] if self._server else None  # type: ignore[return-value]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        release = getattr(self.collector, "release", None)
        if release is not None:
            try:
                release()
            except Exception:  # Redis away at shutdown: the lease runs out by itself
                logger.warning("celery-graph: could not release the metrics exporter")
