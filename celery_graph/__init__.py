"""celery-graph: graph workflows (``a >> b``, ``a | b``) on your existing Celery workers."""

from .client import GraphRun
from .dsl import (
    Flow,
    NamedFlow,
    Parallel,
    Sequence,
    TaskNode,
    Workflow,
    branch,
    node,
    result_of,
    task,
    workflow,
)
from .engine.context import RunContext
from .errors import (
    Backpressure,
    BrokerUnavailable,
    CeleryGraphError,
    ConfigurationError,
    CycleError,
    DeadlineExceeded,
    DuplicateNodeError,
    GraphCorrupted,
    GraphDefinitionError,
    GraphNotFound,
    MissingParameterError,
    NodeLost,
    NotAGraphTaskError,
    PublishError,
    ResultTooLarge,
    RunCancelled,
    RunFailed,
    RunNotFound,
    RunNotResumable,
    RunTimeout,
    SerializationError,
    StoreError,
    StoreUnavailable,
    UnknownInputError,
    UnknownTask,
)
from .model import GraphSpec, NodeStatus, RunStatus
from .protocol import Branch
from .worker.attach import install

__version__ = "0.1.0"

__all__ = [
    # building graphs
    "task",
    "workflow",
    "node",
    "branch",
    "result_of",
    "Branch",
    "Flow",
    "NamedFlow",
    "TaskNode",
    "Sequence",
    "Parallel",
    "Workflow",
    "GraphSpec",
    # workers
    "install",
    # runs
    "GraphRun",
    "RunContext",
    "RunStatus",
    "NodeStatus",
    # errors
    "CeleryGraphError",
    "GraphDefinitionError",
    "CycleError",
    "DuplicateNodeError",
    "MissingParameterError",
    "UnknownInputError",
    "NotAGraphTaskError",
    "ConfigurationError",
    "SerializationError",
    "ResultTooLarge",
    "UnknownTask",
    "StoreError",
    "StoreUnavailable",
    "GraphNotFound",
    "GraphCorrupted",
    "RunNotFound",
    "PublishError",
    "BrokerUnavailable",
    "RunFailed",
    "RunCancelled",
    "RunTimeout",
    "DeadlineExceeded",
    "NodeLost",
    "RunNotResumable",
    "Backpressure",
]
