"""``wait_for(name)``: a node that completes when the run is signalled."""

from __future__ import annotations

from typing import Any

from ..errors import GraphDefinitionError
from ..model import WaitSpec
from ..protocol import WAIT_TASK
from .names import check_node_id
from .values import TaskNode


def _signalled() -> Any:
    raise TypeError("a wait_for() node completes when its run is signalled; it is not called")


def wait_for(name: str, timeout: float | None = None) -> TaskNode[[], Any]:
    """A node with id ``name`` that completes when its run is signalled with ``name``
    (``run.signal(name, payload)``, ``celery-graph signal RUN_ID NAME --data JSON``, the
    dashboard); its result is the signal's payload, so a parameter named ``name``
    downstream receives it::

        approval = prepare >> wait_for("approval", timeout=3600) >> ship
        run = approval.apply_async()
        run.signal("approval", {"approved": True, "by": "ana"})   # def ship(approval): ...

    No worker or worker slot is held while it waits, and nothing polls. A signal sent
    before the run reaches the wait is kept for it. After ``timeout`` seconds (from when
    the run reached it) without a signal the node fails with ``WaitTimeout``.
    """
    check_node_id(name, "wait_for()")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
    ):
        raise GraphDefinitionError(
            f"wait_for({name!r}, timeout={timeout!r}): the timeout is a number of seconds > 0, "
            "or None to wait for ever"
        )
    return TaskNode(
        fn=_signalled,
        task_name=WAIT_TASK,
        id=name,
        wait=WaitSpec(None if timeout is None else float(timeout)),
    )
