"""The live-worker registry: heartbeats written by every worker of an app that uses
celery-graph (``celery worker`` or ``graph-worker``), read by ``celery-graph workers``.

Workers are keyed by their Celery hostname (``-n``), which must be unique: a worker
started under the name of a live one exits with a message. Ages and trims use the Redis
server's clock, so hosts whose clocks disagree list each other correctly.

Each worker's main process registers itself and refreshes its entry every heartbeat
interval (``CELERY_GRAPH_HEARTBEAT_INTERVAL``, default 5 s); the entry expires after three
missed beats, so a worker that dies without cleaning up, even by SIGKILL, drops out. A
worker that stops normally removes its entry at once. (Key layout: ``state/workers.py``.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import ENV_HEARTBEAT_INTERVAL, heartbeat_interval, registry_ttl
from ..errors import ConfigurationError, StoreError
from ..state import State, state_for

logger = logging.getLogger("celery_graph.registry")

__all__ = [
    "ENV_HEARTBEAT_INTERVAL",
    "DuplicateWorkerName",
    "Heartbeat",
    "WorkerInfo",
    "live_workers",
]


@dataclass(frozen=True)
class WorkerInfo:
    """One live worker as the registry sees it. Times are the Redis server's."""

    hostname: str
    pid: int
    queues: list[str]
    started: float
    heartbeat: float
    state: str  # "running" or "stopping" (graceful shutdown under way)
    metrics: dict[str, float] = field(default_factory=dict)
    node: str = ""  # the machine (socket.gethostname()) the worker runs on
    now: float | None = None  # the server's time when the registry was read

    def _now(self) -> float:
        return self.now if self.now is not None else time.time()

    @property
    def heartbeat_age(self) -> float:
        return max(0.0, self._now() - self.heartbeat)

    @property
    def uptime(self) -> float:
        return max(0.0, self._now() - self.started)

    @property
    def mean_runtime(self) -> float | None:
        done = self.metrics.get("processed", 0)
        return self.metrics.get("runtime_total", 0.0) / done if done else None


class DuplicateWorkerName(ConfigurationError):
    """Another live worker already uses this worker name (Celery's ``-n``)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


class Heartbeat:
    """Registers one worker under its unique name and refreshes its entry from a daemon
    thread.

    ``start()`` refuses (``DuplicateWorkerName``) a name another live worker holds: its
    entry's last heartbeat is younger than two intervals, and it is not a dead process of
    this machine (a worker restarted at once after a crash takes its name back).
    ``describe`` is called at every beat and returns the fields that change while the
    worker runs (queues, in-flight count, the node messages it holds: "<run id>:<field>"
    of each); the metrics counters themselves are written by the pool processes, this
    only keeps their hash alive.
    """

    def __init__(
        self,
        state: State,
        hostname: str,
        describe: Callable[[], dict[str, Any]],
        interval: float | None = None,
    ) -> None:
        self.store = state.workers
        self.hostname = hostname
        self.describe = describe
        self.interval = interval or heartbeat_interval()
        self.ttl = registry_ttl(self.interval)
        self.token = uuid.uuid4().hex
        self.node = socket.gethostname()
        self.started = 0.0  # server time, set by start()
        self.pid = os.getpid()
        self.state = "running"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _fields(self) -> tuple[dict[str, Any], int | None]:
        extra = self.describe()
        fields: dict[str, Any] = {
            "hostname": self.hostname,
            "pid": self.pid,
            "node": self.node,
            "state": self.state,
            "queues": json.dumps(sorted(extra.pop("queues", []))),
            # the node messages it holds: the reconciler does not send them again
            "held": json.dumps(sorted(extra.pop("held", []))),
        }
        in_flight = extra.pop("in_flight", None)
        fields.update({k: str(v) for k, v in extra.items()})
        return fields, in_flight

    def start(self) -> None:
        fields, in_flight = self._fields()
        claim = self.store.claim(
            self.hostname, self.token, fields, self.ttl, 2 * self.interval, in_flight=in_flight
        )
        if not claim.claimed:
            stale = claim.owner_node == self.node and (
                claim.owner_pid == self.pid or not _alive(claim.owner_pid)
            )
            if not stale:
                raise DuplicateWorkerName(
                    f"a worker named {self.hostname!r} is already running (pid "
                    f"{claim.owner_pid} on {claim.owner_node or 'another host'}, last "
                    f"heartbeat {claim.owner_age:.1f}s ago): give each worker a unique name "
                    "with -n (for example -n w2@%h), or stop the other one first"
                )
            claim = self.store.claim(
                self.hostname,
                self.token,
                fields,
                self.ttl,
                2 * self.interval,
                in_flight=in_flight,
                force=True,
            )
        self.started = claim.now
        self._thread = threading.Thread(
            target=self._run, name="celery-graph-heartbeat", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except StoreError as exc:  # keep beating; the TTL covers the gap
                logger.warning("celery-graph: heartbeat failed: %s", exc)

    def beat(self) -> None:
        fields, in_flight = self._fields()
        if not self.store.beat(self.hostname, self.token, fields, in_flight, self.ttl):
            logger.error(
                "celery-graph: another worker registered the name %r while this one's entry "
                "had expired; this worker is no longer listed",
                self.hostname,
            )

    def mark_stopping(self) -> None:
        self.state = "stopping"
        with contextlib.suppress(StoreError):
            self.beat()

    def stop(self) -> None:
        """Stop beating and remove the entry now (a clean exit)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 1)
        self.store.remove(self.hostname, self.token)


# -- reading --------------------------------------------------------------------------


def _num(value: str) -> float:
    f = float(value)
    return int(f) if f.is_integer() else f


def live_workers(app: Any) -> list[WorkerInfo]:
    """Every worker of ``app``'s key prefix whose heartbeat has not expired, sorted by
    hostname."""
    out = []
    now, rows = state_for(app).workers.live()
    for hostname, entry, counters in rows:
        out.append(
            WorkerInfo(
                hostname=hostname,
                pid=int(entry.get("pid", 0)),
                queues=json.loads(entry.get("queues", "[]")),
                started=float(entry.get("started", 0)),
                heartbeat=float(entry.get("heartbeat", 0)),
                state=entry.get("state", "running"),
                metrics={k: _num(v) for k, v in counters.items() if "|" not in k},
                node=entry.get("node", ""),
                now=now,
            )
        )
    return sorted(out, key=lambda w: w.hostname)
