"""Revokes that no discarded message reports, acted on by the worker's main process.

Celery reports a revoke through ``task_revoked`` only when a worker discards a message
with a revoked id, or kills the pool process running it (``terminate=True``); the executor
cancels the run then (``executor/task.py``). A revoke of a node that is running without
``terminate``, or of one not published yet, changes nothing in Celery until a message with
that id shows up. So every second the worker looks at its own set of revoked ids (Celery's
``celery.worker.state.revoked``, which every ``control.revoke`` reaches on every worker,
read only) for node task ids it has not seen yet, and cancels their runs: the run ends as
cancelled, naming the node and "revoked", within seconds, whatever the node was doing.

revoke.lua changes nothing for a run that ended, for a node that succeeded, or for a task
id of an earlier epoch of a run resumed since, so a revoke synced from another worker at
start (mingle), or kept in a ``--statedb``, never cancels a run again. A revoked node
running in this worker waits one more look: a ``terminate=True`` revoke kills it and
``task_revoked`` reports it meanwhile, so the run's error says it was terminated.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from celery.worker import state as worker_state

from ..engine.lifecycle import revoked
from ..errors import CeleryGraphError
from ..executor.results import store_revoked
from ..protocol import NodeTaskId
from ..state import Revoked, state_for

logger = logging.getLogger("celery_graph.worker")

SCAN_INTERVAL = 1.0  # seconds between two looks at the worker's revoked ids


def _snapshot(ids: Iterable[Any]) -> list[Any]:
    """A copy of Celery's revoked ids (the consumer adds to them while this thread reads)."""
    for _ in range(5):
        try:
            return list(ids)
        except RuntimeError:  # changed size during iteration: read it again
            continue
    return []


def _active_ids() -> Iterable[str]:
    return [str(r.id) for r in _snapshot(worker_state.active_requests)]


class RevokeWatch:
    """Cancels the runs of node task ids revoked on this worker; ``scan`` looks once.
    ``revoked_ids`` and ``active_ids`` read Celery's revoked ids and the ids of the
    requests this worker runs."""

    def __init__(
        self,
        app: Any,
        revoked_ids: Callable[[], Iterable[str]] = lambda: worker_state.revoked,
        active_ids: Callable[[], Iterable[str]] = _active_ids,
    ) -> None:
        self.app = app
        self._revoked_ids = revoked_ids
        self._active_ids = active_ids
        self._seen: set[str] = set()
        self._waited: set[str] = set()  # running here at the last look
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="celery-graph-revokes", daemon=True)

    def scan(self) -> list[str]:
        """Act on the node task ids revoked since the last scan; the ids whose runs this
        scan cancelled."""
        ids = _snapshot(self._revoked_ids())
        cancelled = []
        new = [i for i in ids if i not in self._seen]
        active = set(self._active_ids()) if new else set()
        for task_id in new:
            node = NodeTaskId.parse(task_id) is not None
            if node and task_id in active and task_id not in self._waited:
                self._waited.add(task_id)  # a terminate reports itself: look again
                continue
            if node and revoked(self.app, state_for(self.app), task_id) == Revoked.ENDED:
                store_revoked(self.app, task_id, "revoked")
                cancelled.append(task_id)
            self._seen.add(task_id)  # not before: after a Redis error it is tried again
            self._waited.discard(task_id)
        if len(self._seen) > len(ids):
            self._seen &= set(ids)  # forget the ids the worker forgot
        return cancelled

    def start(self) -> RevokeWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(SCAN_INTERVAL):
            try:
                self.scan()
            except CeleryGraphError as exc:  # the graph Redis away: the next look retries
                logger.warning("celery-graph: could not act on revoked node messages: %s", exc)
            except Exception:
                logger.exception("celery-graph: acting on revoked node messages failed")
