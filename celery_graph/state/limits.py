"""Concurrency limits of flows (``flow.with_concurrency``): slots, leased, in Redis.

A limit has a scope (the flow's name, or its graph id) and one slot group per distinct
value of its key input (``all`` without a key). A run takes a slot or waits in its group,
in submission order (limit_enter.lua); a run that ends leaves, and the oldest waiting
runs of its group take the free slots (limit_leave.lua); the caller starts them. A slot
is leased: the reconciler looks at a holder whose lease ran out and renews it while its
run is running, starts it if it is still queued (a start that was lost), or frees the slot
when its run ended or never was created (engine/limits.py).
"""

from __future__ import annotations

import json
import time
from typing import Any, NamedTuple

from ..keys import Keys, LimitKeys
from .connection import load_script, translated, translating

SCRIPTS = ("limit_enter", "limit_leave")
LIST_EVERY = 60.0  # seconds between two listings of a scope by one process


class Slot(NamedTuple):
    """Where a run of a limited flow stands: its scope and group, and the limit."""

    scope: str
    group: str
    limit: int


class LimitStore:
    """The slots of every concurrency limit under one key prefix."""

    def __init__(self, client: Any, keys: Keys, ttl: int) -> None:
        self.client = client
        self.keys = keys
        self.ttl = ttl
        self._scripts = {name: client.register_script(load_script(name)) for name in SCRIPTS}
        self._listed: dict[str, float] = {}  # scope -> when this process last listed it

    def _layout(self, scope: str, group: str) -> LimitKeys:
        return self.keys.limit_layout(scope, group)

    def enter(self, slot: Slot, run_id: str, value: Any, lease: float) -> int:
        """Take a slot or wait for one: 0 when the run holds a slot, else its position
        among the runs waiting in its group (1: next)."""
        now = time.monotonic()
        if now - self._listed.get(slot.scope, -LIST_EVERY) >= LIST_EVERY:
            # listed for the reconciler once a minute per process, not at every run
            translated(
                "listing a concurrency limit",
                lambda: (
                    self.client.pipeline(transaction=False)
                    .sadd(self.keys.limits_index(), slot.scope)
                    .expire(self.keys.limits_index(), self.ttl)
                    .execute()
                ),
            )
            self._listed[slot.scope] = now
        args = [run_id, slot.limit, lease, slot.group, json.dumps(value), self.ttl]
        with translating("running limit_enter.lua"):
            holds, position = self._scripts["limit_enter"](
                keys=list(self._layout(slot.scope, slot.group)), args=args
            )
        return 0 if int(holds) else int(position)

    def leave(self, scope: str, group: str, run_id: str, lease: float) -> list[str]:
        """``run_id`` (or "" for none) leaves its group; the runs that took the free slots,
        for the caller to start."""
        with translating("running limit_leave.lua"):
            admitted = self._scripts["limit_leave"](
                keys=list(self._layout(scope, group)), args=[run_id, lease, group]
            )
        return [a.decode() if isinstance(a, bytes) else str(a) for a in admitted]

    def renew(self, scope: str, group: str, run_id: str, until: float) -> None:
        """Extend the lease of a slot a running run holds to ``until`` (server time)."""
        held = self._layout(scope, group).held
        translated("renewing a slot", lambda: self.client.zadd(held, {run_id: until}, xx=True))

    def holds(self, scope: str, group: str, run_id: str) -> bool:
        """Does ``run_id`` hold a slot of its group?"""
        held = self._layout(scope, group).held
        score = translated("reading a slot", lambda: self.client.zscore(held, run_id))
        return score is not None

    def position(self, scope: str, group: str, run_id: str) -> int | None:
        """1 for the next run to take a slot of its group, ... ; None when not waiting."""
        queue = self._layout(scope, group).queue
        rank = translated("reading a queue position", lambda: self.client.zrank(queue, run_id))
        return None if rank is None else int(rank) + 1

    def scopes(self) -> list[str]:
        raw = translated(
            "listing concurrency limits", lambda: self.client.smembers(self.keys.limits_index())
        )
        return sorted(s.decode() for s in raw)

    def groups(self, scope: str) -> tuple[int, dict[str, Any]]:
        """The limit of ``scope`` and {group: key value} of its groups that hold or queue runs."""
        info = self.keys.limit_layout(scope, "all").info
        raw = translated("reading a concurrency limit", lambda: self.client.hgetall(info))
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        limit = int(fields.pop("limit", 0))
        return limit, {k[2:]: json.loads(v) for k, v in fields.items() if k.startswith("v:")}

    def expired(self, scope: str, group: str, now: float, most: int = 500) -> list[str]:
        """Runs of a group whose slot lease ran out by ``now`` (server time)."""
        held = self._layout(scope, group).held
        raw = translated(
            "reading slot leases",
            lambda: self.client.zrangebyscore(held, "-inf", now, 0, most),
        )
        return [r.decode() for r in raw]

    def counts(self, scope: str, group: str) -> tuple[int, int]:
        """(runs holding a slot, runs waiting) in a group."""
        layout = self._layout(scope, group)
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(layout.held)
        pipe.zcard(layout.queue)
        held, waiting = translated("counting slots", pipe.execute)
        return int(held), int(waiting)
