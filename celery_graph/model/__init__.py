"""The model: a compiled graph and a run's status as plain values (no Celery, no Redis)."""

from .compiler import Declarations, GroupDecl, NodeDecl, Param, ResultOf, compile_graph
from .spec import GraphSpec, NodeSpec, tree_ids
from .status import FINAL_STATES, NodeRecord, NodeStatus, Outcome, RunStatus, record_field

__all__ = [
    "Declarations",
    "GroupDecl",
    "NodeDecl",
    "Param",
    "ResultOf",
    "compile_graph",
    "GraphSpec",
    "NodeSpec",
    "tree_ids",
    "FINAL_STATES",
    "NodeRecord",
    "NodeStatus",
    "Outcome",
    "RunStatus",
    "record_field",
]
