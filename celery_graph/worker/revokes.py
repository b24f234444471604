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
whose message this worker holds (received or running) waits while it does, up to
``HOLD_LOOKS`` looks: a ``terminate=True`` revoke kills it and ``task_revoked`` reports
it meanwhile, so the run's error says it was terminated. A terminate this worker's
:class:`TerminateStep` saw for a node it holds is worded so at once, without waiting:
Celery terminates a request only once its pool process has said it started, and until
the main process has read that (under load, seconds after the function began) the
request is received, not active, and nothing is reported.

The ids are also told to the worker's pool processes (``executor/eager.py``'s shared
memory), which then publish a revoked eager successor instead of running it, so Celery
discards its message. An eager successor already running is not a request Celery knows,
so Celery's ``terminate`` does not find it: :class:`TerminateStep`, a consumer of the
worker's own, reads every control message broadcast to the workers (a copy: Celery's
handlers get theirs and nothing of Celery's is replaced) and, for a ``revoke`` with
``terminate=True`` (or ``celery control terminate``) of an eager successor that a pool
process of this worker runs, cancels its run naming the signal and kills that process
with it, as Celery's terminate kills the pool process of a request it received. An eager
successor in a thread of the main process (threads or solo pool) cannot be killed, as
Celery cannot kill a thread: its run is cancelled and the function finishes.

The same step terminates a running node whose id Celery forgot: Celery keeps one request
per task id, and a copy of the node's message acknowledged without running (begin.lua:
busy) dropped the id when it ended, so Celery's terminate answers "tasks unknown" and the
node would run on (:func:`forgotten_requests`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from celery import bootsteps
from celery.platforms import signals as platform_signals
from celery.worker import state as worker_state
from kombu import Consumer
from kombu.matcher import match

from ..engine.lifecycle import message_revoked, revoked
from ..engine.results import store_revoked
from ..errors import CeleryGraphError
from ..executor import eager
from ..protocol import NodeTaskId
from ..state import Revoked, state_for

logger = logging.getLogger("celery_graph.worker")

SCAN_INTERVAL = 1.0  # seconds between two looks at the worker's revoked ids
HOLD_LOOKS = 2  # looks a revoked node held by this worker waits for Celery to report it

# node task ids a control message asked this worker to terminate -> the signal's number,
# noted by TerminateStep (the consumer's thread) for RevokeWatch (its own thread)
_terminating: dict[str, int] = {}


def _snapshot(ids: Iterable[Any]) -> list[Any]:
    """A copy of Celery's revoked ids (the consumer adds to them while this thread reads)."""
    for _ in range(5):
        try:
            return list(ids)
        except RuntimeError:  # changed size during iteration: read it again
            continue
    return []


def _held_ids() -> Iterable[str]:
    """The ids of the requests this worker holds (received or running) and of the eager
    successors it runs."""
    held = _snapshot(worker_state.reserved_requests) + _snapshot(worker_state.active_requests)
    ids = [str(r.id) for r in held]
    here = eager.shared
    if here is not None:
        ids += [task_id for _graph, task_id in here.running()]
    return ids


class RevokeWatch:
    """Cancels the runs of node task ids revoked on this worker; ``scan`` looks once.
    ``revoked_ids`` and ``active_ids`` read Celery's revoked ids and the ids of the
    requests this worker holds (received or running)."""

    def __init__(
        self,
        app: Any,
        revoked_ids: Callable[[], Iterable[str]] = lambda: worker_state.revoked,
        active_ids: Callable[[], Iterable[str]] = _held_ids,
    ) -> None:
        self.app = app
        self._revoked_ids = revoked_ids
        self._active_ids = active_ids
        self._seen: set[str] = set()
        self._waited: dict[str, int] = {}  # held here: looks waited so far
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="celery-graph-revokes", daemon=True)

    def scan(self) -> list[str]:
        """Act on the node task ids revoked since the last scan; the ids whose runs this
        scan cancelled."""
        ids = _snapshot(self._revoked_ids())
        cancelled = []
        new = [i for i in ids if i not in self._seen]
        active = set(self._active_ids()) if new else set()
        here = eager.shared
        if here is not None:  # the pool processes publish these instead of running them
            for task_id in new:
                here.revoke(str(task_id))
        for task_id in new:
            node = NodeTaskId.parse(task_id) is not None
            signum = _terminating.pop(task_id, None)  # taken at the first look, held or not
            if signum is not None and task_id in active:
                # terminated here: Celery kills it now, or once its pool process has said
                # it started, and reports it then; the run's error names the signal alike
                state = state_for(self.app)
                outcome = message_revoked(self.app, state, task_id, terminated=True, signum=signum)
                if outcome == Revoked.ENDED:
                    cancelled.append(task_id)
            elif node and task_id in active and self._waited.get(task_id, 0) < HOLD_LOOKS:
                self._waited[task_id] = self._waited.get(task_id, 0) + 1
                continue  # a terminate reports itself: look again
            elif node and revoked(self.app, state_for(self.app), task_id) == Revoked.ENDED:
                store_revoked(self.app, task_id, "revoked")
                cancelled.append(task_id)
            self._seen.add(task_id)  # not before: after a Redis error it is tried again
            self._waited.pop(task_id, None)
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


def forgotten_requests(node_ids: set[str]) -> list[Any]:
    """The running requests of ``node_ids`` (node task ids) that Celery's own terminate
    does not find.
    Celery keeps one request per task id (``worker_state.requests``) and drops the id
    when any request with it ends; a copy of a running node's message that reached this
    worker (the reconciler's, the broker's after its visibility timeout) is acknowledged
    without running (begin.lua: busy), and its end dropped the id of the request still
    running. Such a request is still active: this step terminates it as Celery would."""
    return [
        r
        for r in list(worker_state.active_requests)
        if r.id in node_ids and worker_state.requests.get(r.id) is not r
    ]


def _terminated_ids(body: Any, hostname: str) -> tuple[set[str], str]:
    """The task ids a control message ``body`` terminates on worker ``hostname``, and the
    signal's name: Celery's ``revoke`` with ``terminate=True`` and its ``terminate``
    command, addressed to every worker, to this one, or to a pattern it matches."""
    if not isinstance(body, dict) or body.get("method") not in ("revoke", "terminate"):
        return set(), ""
    destination, pattern = body.get("destination"), body.get("pattern")
    if destination and hostname not in destination:
        return set(), ""
    matcher = body.get("matcher")
    if not destination and pattern and matcher and not match(hostname, pattern, matcher):  # type: ignore[arg-type]
        return set(), ""
    arguments = body.get("arguments") or {}
    if body["method"] == "revoke" and not arguments.get("terminate"):
        return set(), ""
    ids = arguments.get("task_id") or []
    ids = [ids] if isinstance(ids, str) else list(ids)
    return {str(i) for i in ids}, str(arguments.get("signal") or "SIGTERM")


class TerminateStep(bootsteps.ConsumerStep):
    """Celery's terminate reaches the eager successors a pool process of this worker runs
    (the module's docstring says why and how). Added to ``app.steps['consumer']``."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.consumer = parent

    def get_consumers(self, channel: Any) -> list[Any]:
        c = self.consumer
        mailbox = c.app.control.mailbox
        queue = mailbox.get_queue(f"celery-graph.{c.hostname}")
        accept = sorted({"json", *(c.app.conf.accept_content or ())})
        return [Consumer(channel, [queue], callbacks=[self.on_message], accept=accept, no_ack=True)]

    def on_message(self, body: Any, message: Any) -> None:
        try:
            ids, signame = _terminated_ids(body, self.consumer.hostname)
            if not ids:
                return
            signum = platform_signals.signum(signame)
            if len(_terminating) > 10_000:  # ids no look ever took (never held here)
                _terminating.clear()
            nodes = {i for i in ids if NodeTaskId.parse(i) is not None}
            _terminating.update((i, signum) for i in nodes)
            here = eager.shared
            for pid, task_id in here.pool_holders(ids) if here is not None else ():
                self.terminate(pid, task_id, signame)
            for request in forgotten_requests(nodes):
                logger.info("celery-graph: terminating %s (%s)", request.id, signame)
                request.terminate(self.consumer.pool, signal=signum)
        except Exception:  # a control message is never the worker's to fail on
            logger.exception("celery-graph: acting on a terminate failed")

    def terminate(self, pid: int, task_id: str, signame: str) -> None:
        app = self.consumer.app
        signum = platform_signals.signum(signame)
        try:  # the run first: its error names the signal, and nothing runs after the node
            message_revoked(app, state_for(app), task_id, terminated=True, signum=signum)
        except CeleryGraphError as exc:  # the graph Redis away: RevokeWatch cancels it later
            logger.warning("celery-graph: could not cancel the run of %s: %s", task_id, exc)
        logger.info("celery-graph: terminating eager successor %s (%s)", task_id, signame)
        try:
            os.kill(pid, signum)
        except ProcessLookupError:  # it ended meanwhile
            return
        dispatcher = getattr(self.consumer, "event_dispatcher", None)
        if dispatcher is not None and getattr(dispatcher, "enabled", False):
            dispatcher.send(
                "task-revoked", uuid=task_id, terminated=True, signum=signum, expired=False
            )
