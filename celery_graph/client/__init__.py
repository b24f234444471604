"""The client side of a run: starting it, and the GraphRun handle on it."""

from .canvas import graph_signature, register_run_graph, run_graph
from .run import GraphRun
from .submit import submit_spec

__all__ = ["GraphRun", "graph_signature", "register_run_graph", "run_graph", "submit_spec"]
