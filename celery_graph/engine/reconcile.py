"""The reconciler: graph state, not the broker, decides what still has to run.

Every node that was published or started holds a lease in its run (``leases`` zset):
published nodes for ``graph_queued_lease`` seconds (plus their start delay), running ones
for ``graph_running_lease`` seconds, renewed while their function runs. A sweep looks at
every running run whose next lease is due and, for each lease that ran out:

- a running node whose worker stopped renewing it (SIGKILL, OOM, a lost host) is published
  again; a node that loses its worker more than ``graph_max_lost`` times fails the run
  with ``NodeLost``, naming the node and the last worker (a message that kills workers);
- a published node nobody started is published again, unless a live worker holds its
  message (prefetched, reserved: its heartbeat lists them) or its queue still holds
  messages (it is most likely waiting its turn), the latter for at most ten leases;
- a skip nobody passed on is passed on;
- a map node whose units all arrived but that nobody completed is completed;
- a run past its deadline fails with ``DeadlineExceeded`` (a run queued for a slot of its
  flow's concurrency limit too: it is looked at when its deadline comes);
- a run that ended but whose Celery canvas was not continued is continued.

Then it looks at the slots of concurrency limits whose lease ran out: a slot whose run is
running is renewed, one whose run is still queued (its start was lost) starts it, one
whose run ended or never was created is freed and the next waiting run starts; a group
with free slots and waiting runs (a start that was lost) fills them.

Publishing again is safe because execution is idempotent: a copy of a node finds its
result stored and changes nothing, or finds it running and runs nothing.

The reconciler does not mistake an outage of its own for dead workers (DESIGN.md,
invariant 11). While the graph Redis is away, the renewals of running leases fail as its
sweeps do; when it is back, the leases of live workers may have run out. So each sweep
notes when it was done (``P:reconciler:clock``), and a sweep that finds the last one older
than ``outage_after`` (half a running lease, and three sweep intervals at least: a live
worker's lease can only run out after two thirds of one without renewals) sets a hold one
running lease ahead: until then a running lease that ran out is extended to the hold
instead of reclaimed, and every live worker renews its own in time. Once per outage: a
new hold is set only a lease after the last one ended.

Sweeps run in every worker process that imports celery_graph (one thread each, started
with the worker) under a Redis lock, so one sweeps at a time; ``celery-graph reconcile``
runs one by hand or in a loop.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..codec import decode_value, error_record, exception_record
from ..dispatch import QueueDepth, publish_items, publish_nodes, queue_of, send_woken
from ..errors import (
    BrokerUnavailable,
    CeleryGraphError,
    DeadlineExceeded,
    NodeLost,
    RunNotFound,
    StoreError,
    StoreUnavailable,
    WaitTimeout,
)
from ..model import FINAL_STATES, GraphSpec
from ..protocol import NodeMessage
from ..state import Expiry, Mode, Reclaim, State, StepEnd, Verdict, state_for
from .lifecycle import after_run, end_run, node_failed, settle, start_admitted, step_ended
from .results import store_failed_record

logger = logging.getLogger("celery_graph.reconcile")

# why a lease that ran out sends its node again, for the log
WHY = {
    Expiry.LOST: "its running lease ran out: its worker is gone",
    Expiry.QUEUED: "published, not started within its queued lease",
}
PATIENCE = 10  # a published node waits at most this many queued leases on a busy queue
# a run with no lease (it waits for signals or child runs) is looked at this rarely
IDLE_LOOKS = 10  # queued leases
IDLE_MIN = 300.0  # seconds
UNIT = re.compile(r"[#@](\d+)$")  # "<node>#<i>": an item of a map; "<node>@<j>": a chunk


def node_of(field_: str) -> str:
    """The node id of a lease's field: a node, an item or a chunk of a map."""
    return UNIT.sub("", field_)


@dataclass
class Sweep:
    """What one sweep did."""

    locked_out: bool = False  # another process was sweeping
    runs: int = 0
    redelivered: list[str] = field(default_factory=list)  # "<run>:<field>"
    extended: int = 0  # queued nodes left waiting (their queue is busy)
    skips: int = 0
    maps: int = 0  # map nodes completed after their last unit's worker died
    timeouts: int = 0  # wait_for() nodes failed with WaitTimeout
    held: int = 0  # running leases extended instead of reclaimed, after an outage
    hold: float | None = None  # server time until which they are (an outage was seen)
    failed: list[str] = field(default_factory=list)  # runs failed (deadline, lost node)
    continued: list[str] = field(default_factory=list)  # runs whose canvas continued
    freed: list[str] = field(default_factory=list)  # concurrency slots of runs that ended
    admitted: list[str] = field(default_factory=list)  # queued runs started by the sweep


def outage_after(settings: Any) -> float:
    """Seconds without a sweep after which the reconciler holds off reclaiming running
    leases: a live worker renews every third of a running lease, so its lease runs out
    only after two thirds of one without Redis; half a lease, but three sweep intervals at
    least (a sweep may come that late without any outage)."""
    return max(settings.running_lease / 2, 3 * settings.reconcile_interval)


class Look:
    """What one sweep reads once and shares between runs: queue depths, the units live
    workers hold, the hold after an outage."""

    def __init__(self, hold: float | None = None) -> None:
        self.hold = hold
        self.depths: dict[str, int] = {}
        self._held: set[str] | None = None
        self._limited: set[str] | None = None

    def limited_tasks(self, state: State) -> set[str]:
        """The tasks with graph_concurrency (whether or not this process knows them)."""
        if self._limited is None:
            self._limited = set(state.task_limits.tasks())
        return self._limited

    def held_by_workers(self, state: State) -> set[str]:
        """ "<run id>:<field>" of every node message a live worker holds."""
        if self._held is None:
            self._held = state.workers.held()
        return self._held


class Reconciler:
    def __init__(self, app: Any) -> None:
        self.app = app
        self._depth = QueueDepth(app)
        self._swept_at: float | None = None  # monotonic: this process's last sweep
        self._failing_since: float | None = None  # monotonic: sweeps fail since then

    @property
    def state(self) -> State:
        return state_for(self.app)

    def sweep(self, limit: int = 500) -> Sweep:
        """Look at every running run whose next lease is due; one process at a time."""
        try:
            report = self._sweep(limit)
        except StoreUnavailable:
            if self._failing_since is None:  # since the last sweep that went through
                self._failing_since = self._swept_at or time.monotonic()
            raise
        if not report.locked_out:
            self._failing_since = None
            self._swept_at = time.monotonic()
        return report

    def _sweep(self, limit: int) -> Sweep:
        state = self.state
        report = Sweep()
        lock = state.try_lock(
            state.keys.reconciler_lock(), max(30.0, 10 * state.settings.reconcile_interval)
        )
        if lock is None:
            report.locked_out = True
            return report
        try:
            now = self._clock(state, report)
            due = state.runs.due(now, limit)
            look = Look(report.hold)
            for run_id in due:
                report.runs += 1
                try:
                    now = max(now, self.reconcile(state, run_id, report, look))
                except StoreUnavailable:
                    raise
                except BrokerUnavailable as exc:  # the broker away: looked at again a lease later
                    logger.warning("celery-graph: reconciling run %s: %s", run_id, exc)
                    state.runs.schedule(run_id, state.runs.time() + state.settings.queued_lease)
                except CeleryGraphError as exc:
                    logger.warning("celery-graph: reconciling run %s: %s", run_id, exc)
                except Exception:
                    # a defect met in one run must not stop every later sweep at this run
                    # (it comes first each time) nor keep the runs after it waiting
                    logger.exception("celery-graph: reconciling run %s failed", run_id)
                    state.runs.schedule(run_id, state.runs.time() + state.settings.queued_lease)
            self.sweep_slots(state, now, report)
            self.sweep_task_slots(state, now, report)
            state.runs.mark_swept(now)
        finally:
            state.unlock(lock)
        return report

    def _clock(self, state: State, report: Sweep) -> float:
        """The server's time; sets ``report.hold`` while a hold is on, starting one when the
        last sweep is older than ``outage_after`` (when no sweep was ever noted: when this
        process has failed to sweep for that long)."""
        now, swept, hold = state.runs.sweep_clock()
        if swept is not None:
            gap = now - swept
        elif self._failing_since is not None:
            gap = time.monotonic() - self._failing_since
        else:
            gap = 0.0
        lease = state.settings.running_lease
        if gap > outage_after(state.settings) and (hold is None or now > hold + lease):
            hold = now + lease
            state.runs.mark_swept(now, hold)
            logger.warning(
                "celery-graph: no sweep for %.1f s (the graph Redis, or every reconciler, was "
                "away): running leases that ran out meanwhile are extended for %g s before "
                "any node counts as lost",
                gap,
                lease,
            )
        if hold is not None and hold > now:
            report.hold = hold
        return now

    def reconcile(
        self, state: State, run_id: str, report: Sweep, look: Look | None = None
    ) -> float:
        """Look at one run (``look``: what the sweep shares between runs); the server time
        it was looked at, or 0."""
        look = look or Look()
        r = state.scripts.reclaim(run_id, hold=look.hold)
        if r.verdict == Verdict.GONE:
            state.runs.forget(run_id)
            return 0.0
        if r.verdict == Verdict.ENDED:
            state.runs.index_ended(run_id)  # in case the process that ended it did not
            if not r.pending_continuation:
                state.runs.forget(run_id)
            elif after_run(self.app, state, run_id):
                report.continued.append(run_id)
                state.runs.forget(run_id)
            return 0.0
        if r.verdict == Verdict.QUEUED:  # waiting for a slot: only its deadline may come
            if r.deadline is None:
                state.runs.forget(run_id, gone=("queued", *FINAL_STATES))
            else:
                state.runs.schedule(run_id, r.deadline + 0.01)
            return 0.0
        if r.verdict == Verdict.DEADLINE:
            error = error_record(
                "",
                DeadlineExceeded.__name__,
                DeadlineExceeded.__module__,
                f"run {run_id} passed its deadline",
            )
            end_run(self.app, state, run_id, "failed", error=error)
            report.failed.append(run_id)
            return 0.0
        if r.verdict == Verdict.POISON:
            assert r.poison is not None
            field_, lost, worker = r.poison
            error = exception_record(node_of(field_), NodeLost.after(field_, lost, worker))
            found = self._spec(state, run_id)
            if found is not None and field_ in found[0].steps:  # a handler or compensation
                spec, epoch = found
                step_ended(self.app, state, spec, run_id, field_, StepEnd.FAILED, error, epoch)
                return 0.0
            epoch = found[1] if found is not None else 0
            store_failed_record(self.app, run_id, node_of(field_), error, epoch)
            end_run(self.app, state, run_id, "failed", error=error)
            report.failed.append(run_id)
            return 0.0
        report.held += r.held
        found = self._spec(state, run_id) if r.expired else None
        if found is not None:
            self._act(state, *found, run_id, r, report, look)
        # queued leases left waiting on a busy queue are looked at again a lease later
        nxt = r.now + state.settings.queued_lease
        if r.next_queued is None and r.next_running is None:
            nxt = self._idle(state, run_id, r.now)
        if r.next_queued is not None and r.next_queued > r.now:
            nxt = min(nxt, r.next_queued)
        if r.next_running is not None:
            nxt = min(nxt, max(r.next_running, r.now + 0.1))
        state.runs.schedule(run_id, nxt)
        return r.now

    def sweep_slots(self, state: State, now: float, report: Sweep) -> None:
        """Look at the slots of every concurrency limit whose lease ran out by ``now``."""
        lease = state.settings.queued_lease
        for scope in state.limits.scopes():
            limit, groups = state.limits.groups(scope)
            for group in groups:
                try:
                    self._sweep_group(state, scope, group, limit, now, lease, report)
                except StoreUnavailable:
                    raise
                except CeleryGraphError as exc:
                    logger.warning("celery-graph: concurrency limit %s: %s", scope, exc)

    def sweep_task_slots(self, state: State, now: float, report: Sweep) -> None:
        """Slots of tasks with graph_concurrency whose lease ran out: renewed while the
        node holding one still has a live lease in its run, else freed (its worker died,
        or its message was lost) and handed to the next waiting node, whose message is
        sent again."""
        running = state.settings.running_lease
        for name in state.task_limits.tasks():
            task = self.app.tasks.get(name)
            limit = int(getattr(task, "graph_concurrency", 0) or 0)
            if not limit:
                continue
            woken: list[str] = []
            for holder in state.task_limits.expired(name, now):
                run_id, _, field_ = holder.partition(":")
                if state.runs.leased(run_id, field_, now):
                    state.task_limits.renew(name, holder, now + running)
                    continue
                report.freed.append(holder)
                woken += state.task_limits.release(name, holder, limit, state.settings.queued_lease)
            held, waiting = state.task_limits.counts(name)
            if waiting and held < limit:
                woken += state.task_limits.release(name, "", limit, state.settings.queued_lease)
            for raw in woken:
                send_woken(self.app, json.loads(raw))

    def _sweep_group(
        self,
        state: State,
        scope: str,
        group: str,
        limit: int,
        now: float,
        lease: float,
        report: Sweep,
    ) -> None:
        app = self.app
        for run_id in state.limits.expired(scope, group, now):
            try:
                status = state.runs.record(run_id).get("status")
            except RunNotFound:
                status = None
            if status == "running":
                state.limits.renew(scope, group, run_id, now + lease)
                # started by a process that died before listing it: its roots are leased
                state.runs.keep_tracked(run_id)
            elif status == "queued":  # it took a slot, and whoever moved it died
                state.limits.renew(scope, group, run_id, now + lease)
                report.admitted += start_admitted(app, state, scope, group, [run_id])
            else:  # ended, and its end did not free the slot; or never created
                report.freed.append(run_id)
                nxt = state.limits.leave(scope, group, run_id, lease)
                report.admitted += start_admitted(app, state, scope, group, nxt)
        held, waiting = state.limits.counts(scope, group)
        if waiting and held < limit:
            nxt = state.limits.leave(scope, group, "", lease)
            report.admitted += start_admitted(app, state, scope, group, nxt)

    @staticmethod
    def _idle(state: State, run_id: str, now: float) -> float:
        """The next look at a run with no lease at all: whatever it has not finished
        waits for a signal or a child run, which wake it (they list it again, due at
        once). So it is looked at by its deadline, and otherwise only every
        ``IDLE_LOOKS`` queued leases (a wake lost with a crashing process)."""
        later = now + max(IDLE_LOOKS * state.settings.queued_lease, IDLE_MIN)
        deadline = state.runs.record(run_id).get("deadline")
        return min(later, float(deadline) + 0.05) if deadline else later

    @staticmethod
    def _spec(state: State, run_id: str) -> tuple[GraphSpec, int] | None:
        """The run's graph and epoch (the resumes, in the task ids of what it sends)."""
        try:
            record = state.runs.record(run_id)
            return state.graphs.load(record["graph"]), int(record.get("epoch") or 0)
        except StoreUnavailable:
            raise
        except StoreError as exc:  # the graph expired: nothing to publish from
            logger.warning("celery-graph: run %s: %s", run_id, exc)
            return None

    def _act(
        self,
        state: State,
        spec: GraphSpec,
        epoch: int,
        run_id: str,
        r: Reclaim,
        report: Sweep,
        look: Look,
    ) -> None:
        again: list[str] = []
        why: list[str] = []
        wait: list[str] = []
        for name, kind, queued in r.expired:
            if kind == Expiry.SKIP:
                arrival = state.scripts.complete(spec, run_id, spec.nodes[name], "", kind="skipped")
                settle(self.app, state, spec, run_id, arrival, epoch)
                report.skips += 1
                continue
            if kind == Expiry.TIMEOUT:  # a wait_for() node nobody signalled in time
                node = spec.nodes[name]
                timeout = WaitTimeout(
                    f"wait {name!r} of run {run_id} was not signalled within "
                    f"{node.wait_timeout:g} s"
                )
                error = exception_record(name, timeout)
                store_failed_record(self.app, run_id, name, error, epoch)
                node_failed(self.app, state, spec, run_id, node, error, epoch=epoch)
                report.timeouts += 1
                state.workers.count_semantics("wait_timeouts", state.settings.run_ttl)
                continue
            if kind == Expiry.MAP:  # every unit arrived; the worker completing it died
                count = state.scripts.map_count(run_id, name)
                result = state.scripts.map_results(run_id, name, count)
                arrival = state.scripts.complete(spec, run_id, spec.nodes[name], result)
                settle(self.app, state, spec, run_id, arrival, epoch)
                report.maps += 1
                continue
            if kind == Expiry.QUEUED:
                if f"{run_id}:{name}" in look.held_by_workers(state):
                    wait.append(name)  # a live worker has it: prefetched, reserved
                    continue
                node = spec.nodes[node_of(name)]
                if node.task in look.limited_tasks(state) and state.task_limits.parked(
                    node.task, f"{run_id}:{name}", r.now
                ):
                    # in its task's line (a slot that frees sends it), or woken and on
                    # its way: sending it again would only queue it again
                    wait.append(name)
                    continue
                queue = queue_of(self.app, node)
                if queue not in look.depths:
                    look.depths[queue] = self._depth.depth(queue)
                patient = r.now - queued < PATIENCE * state.settings.queued_lease
                if look.depths[queue] > 0 and patient:
                    wait.append(name)
                    continue
            again.append(name)
            why.append(f"{name} ({WHY[kind]})")
        report.extended += len(wait)  # left as they are: looked at again a lease later
        lost = sum(1 for name, kind, _q in r.expired if kind == Expiry.LOST and name in again)
        acted = len(r.expired) - len(wait)
        try:
            state.workers.count_reconciler(
                {"resent": len(again), "lost": lost, "reclaimed": acted},
                state.settings.run_ttl,
            )
        except StoreUnavailable:
            logger.warning("celery-graph: run %s: could not count the sweep", run_id)
        if again:
            for name, kind, _queued in r.expired:
                if kind == Expiry.LOST and name in again:  # before a new attempt begins
                    state.scripts.attempt(run_id, name, "lost")
            state.scripts.lease(run_id, Mode.REDELIVER, state.settings.queued_lease, again)
            self._publish(state, spec, epoch, run_id, again)
            report.redelivered += [f"{run_id}:{f}" for f in again]
            logger.warning("celery-graph: run %s: sent again %s", run_id, ", ".join(why))

    def _publish(
        self, state: State, spec: GraphSpec, epoch: int, run_id: str, names: list[str]
    ) -> None:
        nodes = [n for n in names if not UNIT.search(n)]
        if nodes:
            publish_nodes(self.app, spec, run_id, nodes, delays=False, epoch=epoch)
        units: dict[str, list[int]] = {}
        for n in names:
            found = UNIT.search(n)
            if found:
                units.setdefault(n[: found.start()], []).append(int(found.group(1)))
        for node_id, indexes in units.items():
            node = spec.nodes[node_id]
            assert node.map_source is not None
            raw = state.runs.results(run_id).get(node.map_source)
            values = decode_value(raw) if raw is not None else []
            message = NodeMessage(spec.graph_id, run_id, node_id, node.call, epoch=epoch)
            publish_items(self.app, node, message, values, indexes)


# -- the sweeping thread of a worker -----------------------------------------------------


class SweepThread:
    """Sweeps every ``graph_reconcile_interval`` seconds until stopped."""

    def __init__(self, app: Any) -> None:
        self.reconciler = Reconciler(app)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="celery-graph-reconciler", daemon=True
        )

    def start(self) -> SweepThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            try:
                interval = self.reconciler.state.settings.reconcile_interval
            except CeleryGraphError:
                interval = 2.0
            if self._stop.wait(interval):
                return
            try:
                self.reconciler.sweep()
            except Exception as exc:  # Redis or the broker away: try again next time
                logger.warning("celery-graph: reconciler sweep failed: %s", exc)
