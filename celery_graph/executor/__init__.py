"""The worker side of a run: what a worker does with a node message."""

from .node import NodeRun, fail_node
from .task import GraphTask, task_body

__all__ = ["GraphTask", "NodeRun", "fail_node", "task_body"]
