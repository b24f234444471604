"""The graph DSL: immutable node values, ``>>`` and ``|``, and the decorators that make
nodes. A flow hands its compiled spec down to the client to run."""

from .children import child
from .decorators import ROUTING_OPTIONS, branch, node, task
from .results import result_of
from .schedules import schedule
from .values import (
    Flow,
    NamedFlow,
    Parallel,
    Sequence,
    TaskNode,
    Workflow,
    check_node_id,
    workflow,
)
from .waits import wait_for

__all__ = [
    "ROUTING_OPTIONS",
    "Flow",
    "NamedFlow",
    "Parallel",
    "Sequence",
    "TaskNode",
    "Workflow",
    "branch",
    "child",
    "check_node_id",
    "node",
    "result_of",
    "schedule",
    "task",
    "wait_for",
    "workflow",
]
