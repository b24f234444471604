"""The worker side of a run: what a worker does with a node message."""

from .node import NodeRun, fail_node
from .task import (
    GraphTask,
    adopt,
    adopt_tasks,
    adopted,
    connect_signals,
    register_call_task,
    register_wait_task,
    run_node,
)

__all__ = [
    "GraphTask",
    "NodeRun",
    "adopt",
    "adopt_tasks",
    "adopted",
    "connect_signals",
    "fail_node",
    "register_call_task",
    "register_wait_task",
    "run_node",
]
