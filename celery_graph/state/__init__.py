"""Graph state in Redis: the only part of celery-graph that talks to Redis.

``state_for(app)`` returns the :class:`State` of an app's settings (one per process and
settings): the graph store, run records, the run indexes, the Lua operations, shared run
state and the worker registry, over one Redis client. Redis errors leave this package
translated (``StoreUnavailable`` and friends, see ``connection.py``).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from ..config import Settings
from ..keys import Keys
from .connection import (
    WAIT_SLICE,
    client_for,
    redis_errors,
    same_server,
    translated,
    translating,
    wait_client_for,
)
from .graphs import GraphStore
from .index import RunIndex, RunRow
from .limits import LimitStore, Slot
from .replies import (
    Acquire,
    After,
    Arrival,
    Begin,
    Begun,
    ChildMark,
    Continuation,
    Ended,
    Expiry,
    Finish,
    Mode,
    Reclaim,
    Revoked,
    Signal,
    StepEnd,
    Stored,
    Verdict,
    Wait,
)
from .runs import RunStore
from .schedules import SCHEDULE_TTL, ScheduleStore
from .scripts import Scripts
from .shared import SharedState
from .tasklimits import Granted, TaskLimitStore
from .workers import WorkerStore, run_counts, task_counts


class State:
    """Everything stored for one set of settings, over one Redis client."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys: Keys = settings.keys
        self.client: Any = client_for(settings)
        self._wait_client: Any = None
        self.graphs = GraphStore(
            self.client,
            self.keys,
            settings.store_ttl,
            settings.cache_size,
            settings.max_graph_bytes,
        )
        self.scripts = Scripts(self.client, self.keys, settings)
        self.runs = RunStore(
            self.client, self.wait_client, self.keys, self.graphs, self.scripts, settings.run_ttl
        )
        self.index = RunIndex(self.client, self.keys, self.runs.time)
        self.shared = SharedState(self.client, self.keys)
        self.workers = WorkerStore(self.client, self.keys)
        self.limits = LimitStore(self.client, self.keys, settings.run_ttl)
        self.task_limits = TaskLimitStore(self.client, self.keys, settings.run_ttl)
        self.schedules = ScheduleStore(self.client, self.keys, max(settings.run_ttl, SCHEDULE_TTL))

    def wait_client(self) -> Any:
        if self._wait_client is None:
            self._wait_client = wait_client_for(self.settings)
        return self._wait_client

    def same_server(self, params: dict[str, Any]) -> bool:
        """Do the redis-py connection ``params`` name this state's one server and
        database (connection.same_server)?"""
        return same_server(self.client, params)

    def ping(self) -> None:
        """Raise StoreUnavailable unless Redis answers."""
        translated("connecting", self.client.ping)

    def try_lock(self, key: str, seconds: float) -> Any | None:
        """A lock on ``key`` held for at most ``seconds``, or None if another holds it."""
        lock = self.client.lock(key, timeout=seconds, blocking=False)
        return lock if translated("taking a lock", lock.acquire) else None

    def wait_lock(self, key: str, seconds: float, wait: float) -> Any | None:
        """A lock on ``key`` held for at most ``seconds``, waiting up to ``wait`` seconds
        for another holder to let go; None if it did not."""
        lock = self.client.lock(key, timeout=seconds)
        acquired = translated(
            "taking a lock", lambda: lock.acquire(blocking=True, blocking_timeout=wait)
        )
        return lock if acquired else None

    def unlock(self, lock: Any) -> None:
        """Release a lock from try_lock; one that ran out meanwhile is simply gone."""
        with contextlib.suppress(redis_errors().LockError), translating("releasing a lock"):
            lock.release()


_states: dict[Settings, State] = {}
_lock = threading.Lock()


def state_for(app: Any) -> State:
    """The State of ``app``'s settings (``app.conf``, then the environment)."""
    settings = Settings.from_app(app)
    with _lock:
        state = _states.get(settings)
        if state is None:
            state = _states[settings] = State(settings)
        return state


__all__ = [
    "ChildMark",
    "Signal",
    "Wait",
    "After",
    "StepEnd",
    "Acquire",
    "Granted",
    "TaskLimitStore",
    "WAIT_SLICE",
    "Arrival",
    "Begin",
    "Begun",
    "Continuation",
    "Ended",
    "Expiry",
    "Finish",
    "LimitStore",
    "Mode",
    "Reclaim",
    "Revoked",
    "RunIndex",
    "RunRow",
    "ScheduleStore",
    "Slot",
    "State",
    "Stored",
    "Verdict",
    "run_counts",
    "state_for",
    "task_counts",
]
