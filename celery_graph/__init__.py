"""celery-graph: graph workflows (``a >> b``, ``a | b``) on your existing Celery workers.

The public names below resolve on first use (PEP 562 ``__getattr__``), so ``import
celery_graph`` alone loads neither Celery nor the rest of the package, and a process that
imports only a part of it (``celery_graph.cli`` for ``celery worker``'s ``workflow``
command, ``celery_graph.testing``) pays only for that part. The first public name read
loads everything importing this package loaded before, ``worker.attach`` included (the
receivers that attach an app declaring a graph task, and the run metrics'): what using
the package changes is the same as before. A submodule read as an attribute
(``celery_graph.state``) is imported then.
"""

from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what mypy and editors see; at run time, ``__getattr__`` below
    from .client import GraphRun
    from .dsl import (
        Flow,
        NamedFlow,
        Parallel,
        Sequence,
        TaskNode,
        Workflow,
        branch,
        child,
        node,
        result_of,
        schedule,
        task,
        wait_for,
        workflow,
    )
    from .engine.context import RunContext
    from .errors import (
        Backpressure,
        BrokerUnavailable,
        CeleryGraphError,
        ConfigurationError,
        CorruptRecord,
        CycleError,
        DeadlineExceeded,
        DuplicateNodeError,
        GraphCorrupted,
        GraphDefinitionError,
        GraphNotFound,
        GraphTooLarge,
        InputTooLarge,
        MissingParameterError,
        NodeLost,
        NotAGraphTaskError,
        PublishError,
        ResultTooLarge,
        RunCancelled,
        RunFailed,
        RunNotFound,
        RunNotResumable,
        RunStateLost,
        RunTimeout,
        SerializationError,
        SignalRefused,
        StoreError,
        StorePermissionDenied,
        StoreUnavailable,
        UnknownInputError,
        UnknownTask,
        WaitTimeout,
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
    "child",
    "wait_for",
    "schedule",
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
    "InputTooLarge",
    "UnknownTask",
    "StoreError",
    "StoreUnavailable",
    "StorePermissionDenied",
    "GraphNotFound",
    "GraphCorrupted",
    "GraphTooLarge",
    "RunNotFound",
    "RunStateLost",
    "CorruptRecord",
    "PublishError",
    "BrokerUnavailable",
    "RunFailed",
    "RunCancelled",
    "RunTimeout",
    "DeadlineExceeded",
    "NodeLost",
    "RunNotResumable",
    "Backpressure",
    "WaitTimeout",
    "SignalRefused",
]

# where each public name lives; all of them load together, in this order (as the imports
# at the top of this module did before they became lazy)
_SOURCES: dict[str, tuple[str, ...]] = {
    ".client": ("GraphRun",),
    ".dsl": (
        "Flow",
        "NamedFlow",
        "Parallel",
        "Sequence",
        "TaskNode",
        "Workflow",
        "branch",
        "child",
        "node",
        "result_of",
        "schedule",
        "task",
        "wait_for",
        "workflow",
    ),
    ".engine.context": ("RunContext",),
    ".errors": (
        "Backpressure",
        "BrokerUnavailable",
        "CeleryGraphError",
        "ConfigurationError",
        "CorruptRecord",
        "CycleError",
        "DeadlineExceeded",
        "DuplicateNodeError",
        "GraphCorrupted",
        "GraphDefinitionError",
        "GraphNotFound",
        "GraphTooLarge",
        "InputTooLarge",
        "MissingParameterError",
        "NodeLost",
        "NotAGraphTaskError",
        "PublishError",
        "ResultTooLarge",
        "RunCancelled",
        "RunFailed",
        "RunNotFound",
        "RunNotResumable",
        "RunStateLost",
        "RunTimeout",
        "SerializationError",
        "SignalRefused",
        "StoreError",
        "StorePermissionDenied",
        "StoreUnavailable",
        "UnknownInputError",
        "UnknownTask",
        "WaitTimeout",
    ),
    ".model": (
        "GraphSpec",
        "NodeStatus",
        "RunStatus",
    ),
    ".protocol": ("Branch",),
    ".worker.attach": ("install",),
}
_lock = threading.RLock()


def _load() -> None:
    """Import the public API's modules and bind its names here, once."""
    with _lock:
        if "task" in globals():
            return
        found: dict[str, Any] = {}
        for module, names in _SOURCES.items():
            imported = importlib.import_module(module, __name__)
            found.update((name, getattr(imported, name)) for name in names)
        globals().update(found)


def __getattr__(name: str) -> Any:
    if name in __all__:
        _load()
        return globals()[name]
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:  # a submodule, as `celery_graph.state` was once the package had imported it
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
