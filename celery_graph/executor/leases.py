"""Running leases: while a node's function runs, a daemon thread in the process that runs
it renews the node's lease every third of ``graph_running_lease``. When the process dies
the renewals stop, the lease runs out, and the reconciler publishes the node again, in
seconds, whatever the broker's visibility timeout or the worker's settings."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator

from ..errors import CeleryGraphError
from ..state import Mode, State

logger = logging.getLogger("celery_graph")


class LeaseKeeper:
    """The leases held by this process, renewed from one thread (started on first use and
    again in a forked child)."""

    def __init__(self) -> None:
        self._held: dict[int, tuple[State, str, str]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid = 0
        self._next = 0
        self._interval = 0.0  # seconds between renewals, as the thread last computed it

    @contextlib.contextmanager
    def hold(self, state: State, run_id: str, field: str) -> Iterator[None]:
        with self._lock:
            self._next += 1
            token = self._next
            self._held[token] = (state, run_id, field)
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="celery-graph-leases", daemon=True).start()
            elif state.settings.running_lease / 3 < self._interval:
                self._wake.set()  # a shorter lease than the thread waits for: renew sooner
        try:
            yield
        finally:
            with self._lock:
                del self._held[token]

    def _run(self) -> None:
        pid = os.getpid()
        while self._pid == pid:
            with self._lock:
                leases = [s.settings.running_lease for s, _, _ in self._held.values()]
                self._interval = min(leases, default=5.0) / 3
            self._wake.wait(self._interval)
            self._wake.clear()
            with self._lock:
                held = list(self._held.values())
            self.renew(held)

    @staticmethod
    def renew(held: list[tuple[State, str, str]]) -> None:
        by_run: dict[tuple[int, str], tuple[State, list[str]]] = {}
        for state, run_id, field in held:
            by_run.setdefault((id(state), run_id), (state, []))[1].append(field)
        for (_, run_id), (state, fields) in by_run.items():
            try:
                state.scripts.lease(run_id, Mode.RENEW, state.settings.running_lease, fields)
            except CeleryGraphError as exc:  # the lease may run out: a duplicate, not a loss
                logger.warning("celery-graph: could not renew leases of run %s: %s", run_id, exc)


keeper = LeaseKeeper()
