"""The one error hierarchy of celery-graph.

Everything celery-graph raises on purpose derives from :class:`CeleryGraphError`.
"""

from __future__ import annotations


class CeleryGraphError(Exception):
    """Root of every error celery-graph raises on purpose."""


# -- graph definition ---------------------------------------------------------


class GraphDefinitionError(CeleryGraphError, ValueError):
    """The graph is malformed; raised before any message is sent."""


class CycleError(GraphDefinitionError):
    """The graph has a cycle."""


class DuplicateNodeError(GraphDefinitionError):
    """Two different nodes share one node id."""


class MissingParameterError(GraphDefinitionError):
    """A required parameter of a node is filled by nothing."""


class UnknownInputError(GraphDefinitionError, TypeError):
    """A run input is a parameter of no node of the graph (most likely a typo)."""


class NotAGraphTaskError(GraphDefinitionError, TypeError):
    """Something that is not a celery-graph node was put into a graph."""


class SignatureTooLarge(GraphDefinitionError):
    """A graph too large to embed in its signature (``flow.s()``); name it by reference
    with ``flow_ref`` instead."""


class ConfigurationError(CeleryGraphError, ValueError):
    """A setting (key prefix, Redis URL, TTL...) is malformed or missing."""


class NoGraphRedis(ConfigurationError):
    """No Redis URL for graph state is set, and the broker is not Redis."""


class UsageError(CeleryGraphError, ValueError):
    """A bad command-line option or argument (``celery-graph``, ``graph-worker``, the
    dashboard's options); the message names it in one line."""


# -- store --------------------------------------------------------------------


class StoreError(CeleryGraphError):
    """The graph store or run state could not be read or written."""


class StoreUnavailable(StoreError):
    """Redis could not be reached."""


class GraphNotFound(StoreError, LookupError):
    """No stored graph under that id (expired, or never stored)."""


class GraphCorrupted(StoreError):
    """A stored graph does not hash to its id; it is refused, not run."""


class GraphTooLarge(StoreError, ValueError):
    """A graph is larger than ``graph_max_graph_bytes``: not stored, or not read."""


class RunNotFound(StoreError, LookupError):
    """No run under that id (expired, wrong key prefix, or never started)."""


class RunStateLost(RunNotFound):
    """A run's state is gone from the graph Redis before it could have expired: the Redis
    lost data (a restart without persistence, a failover to a replica that lagged)."""


class CorruptRecord(StoreError):
    """A run record holds a field that does not parse (written by something else)."""


class StorePermissionDenied(StoreError):
    """The graph Redis refused a command: its user's ACL does not allow it."""


class SerializationError(CeleryGraphError, TypeError):
    """A node's arguments or result cannot be encoded by the serializer."""


class ResultTooLarge(CeleryGraphError, ValueError):
    """A node's encoded result is over ``graph_max_result_bytes``."""


class InputTooLarge(CeleryGraphError, ValueError):
    """A run's encoded inputs are over ``graph_max_input_bytes``; nothing was sent."""


class MalformedMessage(CeleryGraphError, ValueError):
    """A node message's ``_graph`` fields are malformed; the message is rejected."""


class UnknownTask(CeleryGraphError, LookupError):
    """A worker received a node whose task name it does not know."""


# -- barrier ------------------------------------------------------------------


class BarrierError(CeleryGraphError):
    """A barrier script answered something it never should."""


# -- run outcome --------------------------------------------------------------


class RunNotStarted(CeleryGraphError):
    """A ``celery_graph.run_graph`` message (``flow.s()``, a beat entry) could not start
    its run; the run is recorded as failed with the reason."""


class FlowChanged(RunNotStarted):
    """A flow reference compiles to another graph than the one its message names."""


class PublishError(CeleryGraphError):
    """The broker refused or could not take a message; the run is marked failed."""


class BrokerUnavailable(PublishError):
    """The broker could not be reached while sending; the send is retried, never lost."""


class NodeLost(CeleryGraphError):
    """A node's running lease ran out (its worker stopped renewing it: the worker died)
    more often than ``graph_max_lost`` allows."""

    @classmethod
    def after(cls, field: str, times: int, worker: str) -> NodeLost:
        return cls(
            f"{field!r} lost its worker {times} times (last on {worker or 'unknown'}): each "
            "time its running lease ran out because the worker running it stopped renewing "
            "it (a crash, an OOM kill, a message that kills workers?); more than "
            "graph_max_lost allows. Copies of its message that arrived while it ran did "
            "not count"
        )


class DeadlineExceeded(CeleryGraphError):
    """The run passed the deadline it was submitted with; the run is marked failed."""


class WaitTimeout(CeleryGraphError):
    """A ``wait_for`` node was not signalled within its timeout; the node fails."""


class SignalRefused(CeleryGraphError, LookupError):
    """``run.signal(name, ...)`` to a run that has no wait ``name``, that has ended, or
    whose wait has its signal already."""


class Backpressure(CeleryGraphError):
    """The broker queue stayed deeper than ``graph_max_queue_depth`` for too long."""


class RunNotResumable(CeleryGraphError):
    """Only a failed or cancelled run can be resumed."""


class RunTimeout(CeleryGraphError, TimeoutError):
    """``GraphRun.get`` waited longer than its timeout."""


class RunFailed(CeleryGraphError):
    """A node failed after its retries, so the run failed.

    Attributes: ``run_id``, ``node_id``, ``exc_type``, ``exc_message``, ``traceback``.
    """

    def __init__(
        self,
        run_id: str,
        node_id: str,
        exc_type: str,
        exc_message: str,
        traceback: str = "",
    ) -> None:
        self.run_id = run_id
        self.node_id = node_id
        self.exc_type = exc_type
        self.exc_message = exc_message
        self.traceback = traceback
        super().__init__(f"run {run_id} failed at node {node_id!r}: {exc_type}: {exc_message}")

    def __reduce__(self):  # keep it picklable with all its fields
        return (
            type(self),
            (self.run_id, self.node_id, self.exc_type, self.exc_message, self.traceback),
        )

    def __str__(self) -> str:
        text = super().__str__()
        if self.traceback:
            text += "\n\nremote traceback:\n" + self.traceback.rstrip()
        return text


class RunCancelled(CeleryGraphError):
    """The run was cancelled before it finished."""

    def __init__(self, run_id: str, reason: str = "") -> None:
        self.run_id = run_id
        self.reason = reason  # why, when the run recorded it (a node revoked through Celery)
        super().__init__(f"run {run_id} was cancelled" + (f": {reason}" if reason else ""))

    def __reduce__(self):
        return (type(self), (self.run_id,))
