"""The worker's metrics endpoint safe by default, over real HTTP on loopback: it listens
on 127.0.0.1 unless told otherwise (a real ``graph-worker`` included), serves with a few
threads however many sockets are open, and gives every request's head a deadline."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.core import GaugeMetricFamily

from celery_graph.config import WorkerOptions
from celery_graph.testing import free_port
from celery_graph.worker.endpoint import MetricsServer
from celery_graph.worker.heartbeat import live_workers
from tests.support.apps import build_app
from tests.support.helpers import wait_for
from tests.support.processes import start_worker


class Up:
    """A collector with one gauge (the endpoint is under test, not what it counts)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("cgtest_up", "Always 1", value=1)


def get(port: int, path: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def listening(port: int) -> set[str]:
    """The local addresses a socket listens on at ``port`` (Linux: /proc/net/tcp*)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if width == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


@pytest.fixture()
def endpoint() -> Iterator[MetricsServer]:
    server = MetricsServer(Up(), free_port())  # the defaults
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_the_endpoint_listens_on_loopback_unless_told_otherwise(endpoint, monkeypatch):
    monkeypatch.delenv("CELERY_GRAPH_METRICS_HOST", raising=False)
    assert WorkerOptions.from_env().metrics_host == "127.0.0.1"
    assert listening(endpoint.port) == {"127.0.0.1"}
    assert get(endpoint.port, "/healthz") == (200, b"ok\n")
    status, body = get(endpoint.port, "/metrics")
    assert status == 200 and b"cgtest_up 1.0" in body
    everywhere = MetricsServer(Up(), free_port(), "0.0.0.0")
    everywhere.start()
    try:
        assert listening(everywhere.port) == {"0.0.0.0"}
    finally:
        everywhere.stop()


@pytest.mark.slow
def test_a_graph_worker_serves_metrics_on_loopback_by_default(redis_url, tmp_path):
    queue = f"cgtest-metrics-bind-{uuid.uuid4().hex[:8]}"
    prefix = f"cgtest:metrics-bind:{uuid.uuid4().hex[:6]}"
    port = free_port()
    app = build_app(redis_url, queue, key_prefix=prefix)
    worker = start_worker(
        tmp_path,
        "bind",
        broker_url=redis_url,
        queue=queue,
        prefix=prefix,
        extra_args=["--metrics-port", str(port)],
        env={"CELERY_GRAPH_METRICS_HOST": ""},
        concurrency=1,
    )
    try:
        wait_for(lambda: live_workers(app), 30, f"the worker to register\n{worker.log()}")
        wait_for(lambda: listening(port), 10, "the metrics port to listen")
        assert listening(port) == {"127.0.0.1"}
        assert get(port, "/healthz")[0] == 200
    finally:
        worker.stop()


def closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_idle_sockets_hold_a_few_threads_for_a_few_seconds_at_most(endpoint):
    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", endpoint.port), 5) for _ in range(500)]
    drip = socket.create_connection(("127.0.0.1", endpoint.port), 5)
    drip.sendall(b"GET /metrics HTTP/1.1\r\n")
    try:
        # all but a handful are answered "busy" at once and closed, without a thread
        wait_for(
            lambda: sum(map(closed_by_server, idle)) >= 500 - endpoint.threads,
            10,
            "the sockets beyond the threads to be turned away",
        )
        assert threading.active_count() - before <= endpoint.threads + 1
        # a scrape meanwhile gets an answer, never a hang: busy now, served within the deadline
        t0 = time.monotonic()
        assert get(endpoint.port, "/healthz")[0] in (200, 503)
        assert time.monotonic() - t0 < 2
        status = wait_for(
            lambda: get(endpoint.port, "/healthz")[0] == 200, endpoint.deadline + 5, "healthz"
        )
        assert status
        # a head that trickles in is cut off at the deadline, like a silent one
        t0 = time.monotonic()
        while not closed_by_server(drip) and time.monotonic() - t0 < endpoint.deadline + 5:
            drip.setblocking(True)
            try:
                drip.sendall(b"X")
            except OSError:
                break
            time.sleep(0.2)
        assert time.monotonic() - t0 < endpoint.deadline + 5
        wait_for(lambda: all(map(closed_by_server, idle)), 10, "every idle socket closed")
        wait_for(lambda: threading.active_count() - before <= 1, 10, "the serving threads to end")
    finally:
        for sock in [*idle, drip]:
            sock.close()


def test_a_head_over_the_limit_is_not_served(endpoint):
    with socket.create_connection(("127.0.0.1", endpoint.port), 10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\nX-Big: " + b"x" * (20 << 10) + b"\r\n\r\n")
        try:
            answer = sock.recv(65536)
        except ConnectionResetError:
            answer = b""
    assert b"200" not in answer
    assert get(endpoint.port, "/healthz")[0] == 200
