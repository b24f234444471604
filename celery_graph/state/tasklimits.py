"""Fleet-wide limits of a task (``@task(graph_concurrency=N, graph_rate_limit="100/m")``):
slots and a start rate kept in Redis, so they hold across every worker.

A node message of such a task asks for a slot before it begins (task_acquire.lua): it
starts, or it waits without holding a worker, in the task's waiting list with the message
that wakes it (sent again when a slot frees: task_release.lua hands the slot to the oldest
waiting node), or for the seconds the rate asks (sent again with that countdown). A slot
is leased: the reconciler renews the slot of a node whose run still leases it and frees
the others (a dead worker's), waking the next node (engine/reconcile.py).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..keys import Keys, TaskLimitKeys
from .connection import load_script, translated, translating
from .replies import Acquire

SCRIPTS = ("task_acquire", "task_release")


class Granted(NamedTuple):
    """What task_acquire.lua answered."""

    code: Acquire
    new: bool = False  # OK: this call took the slot (else it held it already)
    position: int = 0  # FULL: its place among the waiting nodes (1: next)
    wait: float = 0.0  # RATE: seconds until the rate allows a start


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class TaskLimitStore:
    """The limits of every task under one key prefix."""

    def __init__(self, client: Any, keys: Keys, ttl: int) -> None:
        self.client = client
        self.keys = keys
        self.ttl = ttl
        self._scripts = {name: client.register_script(load_script(name)) for name in SCRIPTS}

    def _layout(self, task: str) -> list[str]:
        return list(self.keys.task_limit_layout(task))

    def acquire(
        self, task: str, holder: str, limit: int, interval: float, lease: float, message: str
    ) -> Granted:
        """Ask for a slot of ``task`` (``limit`` 0: no concurrency limit) within its rate
        (``interval`` seconds between starts, 0: none) for ``holder``; ``message``: what
        wakes it if it has to wait."""
        if limit:
            translated(
                "listing a task limit",
                lambda: self.client.sadd(self.keys.task_limits_index(), task),
            )
        args = [holder, limit, lease, interval, message, self.ttl]
        with translating("running task_acquire.lua"):
            code, detail = self._scripts["task_acquire"](keys=self._layout(task), args=args)
        granted = Acquire(_text(code))
        if granted == Acquire.OK:
            return Granted(granted, new=bool(int(detail)))
        if granted == Acquire.FULL:
            return Granted(granted, position=int(detail))
        return Granted(granted, wait=float(_text(detail)))

    def release(self, task: str, holder: str, limit: int, lease: float) -> list[str]:
        """``holder`` ("" for none) gives its slot back; the messages of the waiting nodes
        that took free slots, for the caller to send again."""
        with translating("running task_release.lua"):
            woken = self._scripts["task_release"](
                keys=self._layout(task), args=[holder, limit, lease]
            )
        return [_text(m) for m in woken]

    def tasks(self) -> list[str]:
        raw = translated(
            "listing task limits",
            lambda: self.client.smembers(self.keys.task_limits_index()),
        )
        return sorted(_text(t) for t in raw)

    def expired(self, task: str, now: float, most: int = 500) -> list[str]:
        """Holders of ``task``'s slots whose lease ran out by ``now`` (server time)."""
        held = self.keys.task_limit_layout(task).held
        raw = translated(
            "reading slot leases", lambda: self.client.zrangebyscore(held, "-inf", now, 0, most)
        )
        return [_text(r) for r in raw]

    def renew(self, task: str, holder: str, until: float) -> None:
        held = self.keys.task_limit_layout(task).held
        translated("renewing a slot", lambda: self.client.zadd(held, {holder: until}, xx=True))

    def parked(self, task: str, holder: str, now: float) -> bool:
        """Is ``holder`` waiting for a slot of ``task``, or woken into one whose lease is
        alive at ``now`` (its message on its way)? Its message is not lost then."""
        layout = self.keys.task_limit_layout(task)
        pipe = self.client.pipeline(transaction=False)
        pipe.zscore(layout.waiting, holder)
        pipe.zscore(layout.held, holder)
        waiting, held = translated("reading a task slot", pipe.execute)
        return waiting is not None or (held is not None and float(held) > now)

    def counts(self, task: str) -> tuple[int, int]:
        """(nodes holding a slot, nodes waiting) of ``task``."""
        layout: TaskLimitKeys = self.keys.task_limit_layout(task)
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(layout.held)
        pipe.zcard(layout.waiting)
        held, waiting = translated("counting slots", pipe.execute)
        return int(held), int(waiting)
