"""The node message on the wire, and the names celery-graph reserves.

A node's message is an ordinary Celery message of the node's own task name. Its keyword
arguments are the node's bound arguments plus one extra keyword, ``_graph``::

    {"g": graph id, "r": run id, "n": node id}     every node message
    {..., "t": "proj.tasks.resize"}                 an existing task run through
                                                    celery_graph.call (graphs stored by
                                                    earlier versions; now such a node's
                                                    message has the task's own name)
    {..., "i": 3, "c": 10}                          item 3 of 10 of a dynamic fan-out
    {..., "i": 3, "c": 10, "k": 100}                chunk 3 of 10, 100 items each
    {..., "x": 2}                                   sent again after 2 infrastructure errors
    {..., "f": "<error record>"}                    record this failure (Redis was down when
                                                    the node failed), do not run the node

Nothing else of the graph travels with the message (the spec is loaded from the store),
so a message's size does not grow with the graph. Its task id is ``<run id>:<node id>``
(``...#<i>`` for an item), which Flower shows.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .errors import MalformedMessage
from .keys import RUN_ID_RE

GRAPH_KWARG = "_graph"

CALL_TASK = "celery_graph.call"  # ran existing tasks as nodes; kept for stored graphs
RUN_GRAPH = "celery_graph.run_graph"  # starts a graph as a step of a Celery canvas


def task_id_for(run_id: str, node_id: str, index: int | None = None) -> str:
    base = f"{run_id}:{node_id}"
    return base if index is None else f"{base}#{index}"


@dataclass(frozen=True)
class NodeMessage:
    """The ``_graph`` keyword of one node message, parsed."""

    graph_id: str
    run_id: str
    node_id: str
    call: str | None = None  # the existing task a node() runs, shown in Flower
    index: int | None = None  # item of a dynamic fan-out
    count: int | None = None  # items (or chunks) in that fan-out
    chunk: int = 0  # items per chunk, when the message carries a chunk of items
    infra: int = 0  # times sent again because Redis or the broker could not be reached
    failure: str | None = None  # an error record to store instead of running the node

    @classmethod
    def parse(cls, fields: Any) -> NodeMessage:
        """The ``_graph`` keyword of a message, checked: MalformedMessage names the first
        field that is missing or of the wrong kind (a message not sent by celery-graph,
        or edited on the way)."""
        if not isinstance(fields, dict):
            raise MalformedMessage(
                f"{GRAPH_KWARG} is a {type(fields).__name__}, not an object of graph fields"
            )
        message = cls(
            _field(fields, "g", _graph_ids, "a graph id (64 hex digits)", required=True),
            _field(fields, "r", _run_ids, "a run id (32 hex digits)", required=True),
            _field(fields, "n", _texts, "a node id", required=True),
            _field(fields, "t", _texts, "a task name"),
            _field(fields, "i", _counts, "an item index"),
            _field(fields, "c", _counts, "an item count"),
            _field(fields, "k", _counts, "a chunk size") or 0,
            _field(fields, "x", _counts, "a resend count") or 0,
            _field(fields, "f", _texts, "an error record"),
        )
        index, count = message.index, message.count
        if (index is None or count is None or index >= count) and (index, count) != (None, None):
            raise MalformedMessage(
                f"{GRAPH_KWARG}['i'] and ['c'] should be an item index below an item count, "
                f"got {index!r} and {count!r}"
            )
        return message

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"g": self.graph_id, "r": self.run_id, "n": self.node_id}
        if self.call:
            out["t"] = self.call
        if self.index is not None:
            out["i"] = self.index
            out["c"] = self.count
        if self.chunk:
            out["k"] = self.chunk
        if self.infra:
            out["x"] = self.infra
        if self.failure is not None:
            out["f"] = self.failure
        return out

    def item(self, index: int, count: int, chunk: int = 0) -> NodeMessage:
        return replace(self, index=index, count=count, chunk=chunk, infra=0, failure=None)

    def again(self, failure: str | None = None) -> NodeMessage:
        """This message to send again after an infrastructure error (carrying ``failure``
        to record, when the error hit while recording a failure)."""
        return replace(self, infra=self.infra + 1, failure=failure or self.failure)

    @property
    def task_id(self) -> str:
        base = task_id_for(self.run_id, self.node_id)
        if self.index is None:
            return base
        return f"{base}{'@' if self.chunk else '#'}{self.index}"

    @property
    def result_field(self) -> str:
        """The field of this message's unit of work, where its state and lease live (and
        its result, but for a chunk): the node id, "<node>#<i>" for an item of a map,
        "<node>@<j>" for a chunk of items."""
        if self.index is None:
            return self.node_id
        return f"{self.node_id}{'@' if self.chunk else '#'}{self.index}"


def _graph_ids(value: Any) -> bool:
    return isinstance(value, str) and bool(_GRAPH_ID.match(value))


def _run_ids(value: Any) -> bool:
    return isinstance(value, str) and bool(RUN_ID_RE.match(value))


def _texts(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 1 << 20


def _counts(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


_GRAPH_ID = re.compile(r"^[0-9a-f]{64}$")


def _field(
    fields: dict[str, Any], name: str, valid: Callable[[Any], bool], what: str, required=False
) -> Any:
    value = fields.get(name)
    if value is None:
        if required:
            raise MalformedMessage(f"{GRAPH_KWARG}[{name!r}], {what}, is missing")
        return None
    if not valid(value):
        raise MalformedMessage(f"{GRAPH_KWARG}[{name!r}] should be {what}, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{text[:60]}..." if len(text) > 60 else text


def graph_fields(kwargs: Any) -> dict[str, Any] | None:
    """The ``_graph`` fields of a message's keyword arguments, or None (a plain call)."""
    return kwargs.get(GRAPH_KWARG) if isinstance(kwargs, dict) else None


@dataclass(frozen=True)
class Branch:
    """What a node returns to run only some of its successors; see ``branch()``."""

    targets: tuple[str, ...]
    value: Any = None

    def choice(self) -> str:
        """The choice as stored with the node's state: "!a,b" ("!" alone: none)."""
        return "!" + ",".join(self.targets)
