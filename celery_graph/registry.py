"""The live-worker registry: heartbeats written by ``graph-worker``, read by
``celery-graph workers``.

Each graph-worker's main process keeps two keys under the key prefix and refreshes them
every heartbeat interval (``CELERY_GRAPH_HEARTBEAT_INTERVAL``, default 5 s):

    P:worker:<hostname>           hash  hostname, pid, queues (JSON), started, heartbeat, state
    P:worker:<hostname>:metrics   hash  counters written by the pool processes (see metrics.py)
    P:workers                     zset  hostname -> last heartbeat (the listing index)

All three expire ``ttl`` seconds (3 heartbeat intervals) after the last heartbeat, so a
worker that dies without cleaning up, even by SIGKILL, drops out after the TTL. A worker
that stops normally deletes its keys at once.

Run ``python -m celery_graph.registry -A proj.celery`` to print the live workers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import redis

from .config import Settings
from .keys import Keys
from .store import translate_errors

logger = logging.getLogger("celery_graph.registry")

ENV_HEARTBEAT_INTERVAL = "CELERY_GRAPH_HEARTBEAT_INTERVAL"
DEFAULT_HEARTBEAT_INTERVAL = 5.0
TTL_INTERVALS = 3  # a worker is gone after missing this many heartbeats


def heartbeat_interval() -> float:
    raw = os.environ.get(ENV_HEARTBEAT_INTERVAL)
    value = float(raw) if raw else DEFAULT_HEARTBEAT_INTERVAL
    if value <= 0:
        raise ValueError(f"{ENV_HEARTBEAT_INTERVAL} must be positive, got {raw!r}")
    return value


@dataclass(frozen=True)
class WorkerInfo:
    """One live worker as the registry sees it."""

    hostname: str
    pid: int
    queues: list[str]
    started: float
    heartbeat: float
    state: str  # "running" or "stopping" (graceful shutdown under way)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def heartbeat_age(self) -> float:
        return max(0.0, time.time() - self.heartbeat)

    @property
    def uptime(self) -> float:
        return max(0.0, time.time() - self.started)

    @property
    def mean_runtime(self) -> float | None:
        done = self.metrics.get("processed", 0)
        return self.metrics.get("runtime_total", 0.0) / done if done else None


class Heartbeat:
    """Registers one worker and refreshes its entry from a daemon thread.

    ``describe`` is called at every beat and returns the fields that change while the
    worker runs (queues, in-flight count); the metrics counters themselves are written by
    the pool processes with HINCRBY, this only keeps their hash alive.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        hostname: str,
        describe: Callable[[], dict[str, Any]],
        interval: float | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.hostname = hostname
        self.describe = describe
        self.interval = interval or heartbeat_interval()
        self.ttl = max(1, round(self.interval * TTL_INTERVALS))
        self.started = time.time()
        self.pid = os.getpid()
        self.state = "running"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # A restarted worker with the same name starts its counters from zero, like a
        # Prometheus counter after a process restart.
        self.client.delete(self.keys.worker_metrics(self.hostname))
        self.beat()
        self._thread = threading.Thread(
            target=self._run, name="celery-graph-heartbeat", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except redis.RedisError as exc:  # keep beating; the TTL covers the gap
                logger.warning("celery-graph: heartbeat failed: %s", exc)

    def beat(self) -> None:
        now = time.time()
        extra = self.describe()
        fields: dict[Any, Any] = {
            "hostname": self.hostname,
            "pid": self.pid,
            "started": repr(self.started),
            "heartbeat": repr(now),
            "state": self.state,
            "queues": json.dumps(sorted(extra.pop("queues", []))),
        }
        in_flight = extra.pop("in_flight", None)
        fields.update({k: str(v) for k, v in extra.items()})
        worker_key = self.keys.worker(self.hostname)
        metrics_key = self.keys.worker_metrics(self.hostname)
        index = self.keys.workers_index()
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(worker_key, mapping=fields)
        pipe.expire(worker_key, self.ttl)
        pipe.hsetnx(metrics_key, "processed", 0)  # so a fresh worker shows zeros
        if in_flight is not None:
            pipe.hset(metrics_key, "in_flight", in_flight)
        pipe.expire(metrics_key, self.ttl)
        pipe.zadd(index, {self.hostname: now})
        pipe.zremrangebyscore(index, "-inf", now - self.ttl)
        pipe.expire(index, self.ttl)
        pipe.execute()

    def mark_stopping(self) -> None:
        self.state = "stopping"
        with contextlib.suppress(redis.RedisError):
            self.beat()

    def stop(self) -> None:
        """Stop beating and remove the entry now (a clean exit)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 1)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.keys.worker(self.hostname), self.keys.worker_metrics(self.hostname))
        pipe.zrem(self.keys.workers_index(), self.hostname)
        pipe.execute()


# -- reading --------------------------------------------------------------------------


def _num(value: str) -> float:
    f = float(value)
    return int(f) if f.is_integer() else f


def live_workers(app: Any = None, client: redis.Redis | None = None) -> list[WorkerInfo]:
    """Every worker whose heartbeat has not expired, sorted by hostname."""
    settings = _settings(app)
    keys = settings.keys
    client = client or redis.Redis.from_url(settings.redis_url, decode_responses=True)

    def read() -> list[WorkerInfo]:
        hostnames = [_text(h) for h in client.zrange(keys.workers_index(), 0, -1)]
        pipe = client.pipeline(transaction=False)
        for h in hostnames:
            pipe.hgetall(keys.worker(h))
            pipe.hgetall(keys.worker_metrics(h))
        replies = pipe.execute()
        out = []
        for i, h in enumerate(hostnames):
            entry = {_text(k): _text(v) for k, v in replies[2 * i].items()}
            if not entry:  # expired between the two reads, or never fully written
                continue
            metrics = {_text(k): _num(_text(v)) for k, v in replies[2 * i + 1].items()}
            out.append(
                WorkerInfo(
                    hostname=h,
                    pid=int(entry.get("pid", 0)),
                    queues=json.loads(entry.get("queues", "[]")),
                    started=float(entry.get("started", 0)),
                    heartbeat=float(entry.get("heartbeat", 0)),
                    state=entry.get("state", "running"),
                    metrics=metrics,
                )
            )
        return sorted(out, key=lambda w: w.hostname)

    return translate_errors("reading the worker registry", read)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _settings(app: Any) -> Settings:
    if app is None:
        from celery import Celery

        # No app: the key prefix and Redis URL come from the environment alone.
        app = Celery("celery_graph_registry", set_as_current=False)
    return Settings.from_app(app)


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


COLUMNS = (
    "WORKER", "STATE", "PID", "QUEUES", "HEARTBEAT", "UPTIME",
    "PROCESSED", "OK", "FAILED", "MEAN", "IN-FLIGHT",
)


def print_workers(app: Any = None, out: IO[str] = sys.stdout) -> int:
    """Print the live workers as a table; returns the exit status (0).

    Example output::

        WORKER     STATE    PID   QUEUES  HEARTBEAT  UPTIME  PROCESSED  OK   FAILED  MEAN
        cpu@host1  running  4121  celery  1.2s ago   5m03s   120        119  1       0.041s

    (plus an IN-FLIGHT column: tasks the worker held at its last heartbeat)
    """
    workers = live_workers(app)
    if not workers:
        print(f"no live workers under key prefix {_settings(app).key_prefix!r}", file=out)
        return 0
    rows = [COLUMNS]
    for w in workers:
        m = w.metrics
        mean = w.mean_runtime
        rows.append(
            (
                w.hostname,
                w.state,
                str(w.pid),
                ",".join(w.queues) or "-",
                f"{_duration(w.heartbeat_age)} ago",
                _duration(w.uptime),
                str(m.get("processed", 0)),
                str(m.get("succeeded", 0)),
                str(m.get("failed", 0)),
                f"{mean:.3f}s" if mean is not None else "-",
                str(m.get("in_flight", 0)),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    for r in rows:
        print("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip(), file=out)
    return 0


def _app_from_argv(argv: list[str]) -> Any:
    name = os.environ.get("CELERY_APP")
    it = iter(argv)
    for arg in it:
        if arg in ("-A", "--app"):
            name = next(it, None)
        elif arg.startswith("--app="):
            name = arg.split("=", 1)[1]
        elif arg.startswith("-A") and len(arg) > 2:
            name = arg[2:]
        elif arg in ("-h", "--help"):
            print("usage: python -m celery_graph.registry [-A APP]\n\nPrints the live "
                  "graph-workers under the app's key prefix (without -A: from "
                  "CELERY_GRAPH_REDIS_URL and CELERY_GRAPH_KEY_PREFIX).")
            raise SystemExit(0)
    if not name:
        return None
    from celery.app.utils import find_app

    sys.path.insert(0, os.getcwd())
    return find_app(name)


def main(argv: list[str] | None = None) -> int:
    return print_workers(_app_from_argv(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
