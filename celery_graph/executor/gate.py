"""Fleet-wide limits of a task, at the start of each of its node messages.

``@task(graph_concurrency=N)``: at most N of the task's nodes run at once across every
worker; ``@task(graph_rate_limit="100/m")``: at most that many start per second, minute
or hour across every worker (Celery's own ``rate_limit`` holds per worker process). A
node over a limit does not hold a worker: over the concurrency it waits in the task's
waiting list and its message is acknowledged, then sent again (same task id) when a slot
frees; over the rate its message is sent again with the countdown the rate asks. A node
that ran gives its slot back whatever the outcome (a result, a failure, a retry), and the
oldest waiting node takes it; the slot of a worker that died is freed by the reconciler.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from celery import Task

from ..dispatch import send_woken
from ..errors import CeleryGraphError, GraphDefinitionError
from ..protocol import NodeMessage
from ..state import Acquire, Begin, State

logger = logging.getLogger("celery_graph")

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(rate: Any, where: str = "graph_rate_limit") -> float:
    """Seconds between two starts for a rate such as ``"100/m"`` (per s, m or h)."""
    found = _RATE.match(rate) if isinstance(rate, str) else None
    if found is None or float(found.group(1)) <= 0:
        raise GraphDefinitionError(
            f"{where}={rate!r}: expected starts per second, minute or hour, e.g. '100/m'"
        )
    return _PER[found.group(2)] / float(found.group(1))


def check_limits(where: str, options: dict[str, Any]) -> None:
    """GraphDefinitionError naming a bad graph_concurrency or graph_rate_limit option."""
    limit = options.get("graph_concurrency")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise GraphDefinitionError(
            f"{where}: graph_concurrency={limit!r}: expected a whole number of runs at once, "
            "1 or more"
        )
    rate = options.get("graph_rate_limit")
    if rate is not None:
        parse_rate(rate, f"{where}: graph_rate_limit")


@dataclass(frozen=True)
class TaskLimits:
    concurrency: int  # 0: none
    interval: float  # seconds between starts, 0: no rate limit

    @classmethod
    def of(cls, task: Task) -> TaskLimits | None:
        limit = getattr(task, "graph_concurrency", None) or 0
        rate = getattr(task, "graph_rate_limit", None)
        if not limit and not rate:
            return None
        return cls(int(limit), parse_rate(rate) if rate else 0.0)


class Gate:
    """One node message's pass through its task's limits."""

    def __init__(self, task: Task, message: NodeMessage, limits: TaskLimits, state: State):
        self.task = task
        self.message = message
        self.limits = limits
        self.state = state
        self.holder = f"{message.run_id}:{message.result_field}"
        self.new = False

    def enter(self) -> bool:
        """True when the node may start now; False when its message waits (acknowledged:
        it is sent again when a slot frees, or when the rate allows)."""
        request = self.task.request
        delivery = request.delivery_info or {}
        wake = {
            "task": self.task.name,
            "id": request.id,
            "args": list(request.args or ()),
            "kwargs": dict(request.kwargs or {}),
            "queue": delivery.get("routing_key"),
            "priority": delivery.get("priority"),
        }
        granted = self.state.task_limits.acquire(
            self.task.name,
            self.holder,
            self.limits.concurrency,
            self.limits.interval,
            self.state.settings.running_lease,
            json.dumps(wake),
        )
        if granted.code == Acquire.OK:
            self.new = granted.new
            return True
        if granted.code == Acquire.FULL:
            logger.info(
                "celery-graph: %s of run %s waits for a slot of %s (graph_concurrency=%d; "
                "#%d in line): sent again when one frees",
                self.message.result_field,
                self.message.run_id,
                self.task.name,
                self.limits.concurrency,
                granted.position,
            )
            return False
        send_woken(self.task.app, wake, countdown=granted.wait)
        return False

    def leave(self, began: str | None) -> None:
        """Give the slot back when this delivery took it or ran the node, and send again
        the message of the node that takes it."""
        if not self.limits.concurrency or not (self.new or began == Begin.RUNNING):
            return
        try:
            woken = self.state.task_limits.release(
                self.task.name,
                self.holder,
                self.limits.concurrency,
                self.state.settings.queued_lease,
            )
            for raw in woken:
                send_woken(self.task.app, json.loads(raw))
        except CeleryGraphError as exc:  # the slot's lease runs out: the reconciler frees it
            logger.warning("celery-graph: giving back a slot of %s: %s", self.task.name, exc)
