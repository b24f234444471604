"""The model: a compiled graph and a run's status as plain values (no Celery, no Redis)."""

from .child import Child, child_run_id
from .compiler import (
    AfterDecl,
    Declarations,
    GroupDecl,
    NodeDecl,
    Param,
    ResultOf,
    WaitSpec,
    compile_graph,
)
from .spec import Concurrency, GraphSpec, NodeSpec, tree_ids
from .status import (
    FINAL_STATES,
    NODE_ATTRS,
    NODE_STATES,
    NodeRecord,
    NodeStatus,
    Outcome,
    RunStatus,
    count_field,
    record_field,
    recount,
    shown_state,
)

__all__ = [
    "Child",
    "child_run_id",
    "AfterDecl",
    "Declarations",
    "GroupDecl",
    "NodeDecl",
    "Param",
    "ResultOf",
    "WaitSpec",
    "compile_graph",
    "Concurrency",
    "GraphSpec",
    "NodeSpec",
    "tree_ids",
    "FINAL_STATES",
    "NODE_ATTRS",
    "NODE_STATES",
    "count_field",
    "recount",
    "shown_state",
    "NodeRecord",
    "NodeStatus",
    "Outcome",
    "RunStatus",
    "record_field",
]
