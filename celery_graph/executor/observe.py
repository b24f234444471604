"""What tracers and error reporters learn of a node delivery.

An observer (``celery_graph.integrations`` registers one per SDK when an app is
installed) is called at the start of every node message the worker runs, on the thread
that runs it, and answers an :class:`Observation` when its SDK is active there, else None.
Only a delivery that some observer watches costs anything more, and nothing in round
trips: begin.lua, in the call it makes anyway, keeps the delivery's trace context (a
W3C ``traceparent``, for the links of the joins downstream) and answers the run's flow
name and the trace contexts its predecessors kept (for a join).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from celery.utils.log import get_task_logger

from ..model import NodeSpec
from ..protocol import NodeMessage

logger = get_task_logger("celery_graph.task")

# The most predecessors a join's span links to: OpenTelemetry's default span link limit
# (OTEL_SPAN_LINK_COUNT_LIMIT), which drops any link past it anyway.
LINK_LIMIT = 128


class Observation(Protocol):
    """What one observer does with one node delivery it watches."""

    def trace(self) -> str:
        """This delivery's trace context to keep for the joins downstream ("": none)."""
        ...

    def wants_links(self) -> bool:
        """True when it shows a join's links to its predecessors."""
        ...

    def begun(self, flow: str | None, links: Mapping[str, str]) -> None:
        """begin.lua answered: the run's flow name, and {predecessor: trace context} of a
        join's predecessors that kept one."""
        ...


Observer = Callable[[Any, NodeMessage], "Observation | None"]

_observers: list[Observer] = []


def add_observer(observer: Observer) -> None:
    """Call ``observer(task, message)`` at the start of every node delivery (idempotent)."""
    if observer not in _observers:
        _observers.append(observer)


def remove_observer(observer: Observer) -> None:
    if observer in _observers:
        _observers.remove(observer)


class Watch:
    """The observations of one node delivery."""

    def __init__(self, observations: list[Observation]) -> None:
        self.observations = observations

    def trace(self, message: NodeMessage) -> str:
        """The trace context to keep: only a node's own message keeps one (a join links
        to a map node's span, never to an item's)."""
        if message.index is not None:
            return ""
        return next((t for t in (o.trace() for o in self.observations) if t), "")

    def links(self, node: NodeSpec, message: NodeMessage) -> list[str]:
        """The predecessors whose trace contexts to read: a join's, when shown."""
        if not node.is_join or message.index is not None:
            return []
        if not any(o.wants_links() for o in self.observations):
            return []
        return list(node.preds[:LINK_LIMIT])

    def begun(self, flow: str | None, links: Mapping[str, str]) -> None:
        for observation in self.observations:
            try:
                observation.begun(flow, links)
            except Exception:  # an SDK's failure never fails the node
                logger.warning("celery-graph: an observer failed", exc_info=True)


def watch(task: Any, message: NodeMessage) -> Watch | None:
    """The observations of this delivery; None when nothing watches it (no observer, or
    none of their SDKs is active)."""
    if not _observers:
        return None
    found: list[Observation] = []
    for observer in list(_observers):
        try:
            observation = observer(task, message)
        except Exception:  # an SDK's failure never fails the node
            logger.warning("celery-graph: an observer failed", exc_info=True)
            continue
        if observation is not None:
            found.append(observation)
    return Watch(found) if found else None
