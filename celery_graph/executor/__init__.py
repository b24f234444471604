"""The worker side of a run: what a worker does with a node message."""

from .node import NodeRun, fail_node
from .task import GraphTask, adopt, adopted, run_node

__all__ = ["GraphTask", "NodeRun", "adopt", "adopted", "fail_node", "run_node"]
