"""The messages on the wire (a node's, and ``run_graph``'s), and the names celery-graph
reserves.

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
    {..., "a": 3}                                   sent by attempt 3 of the node, which
                                                    hands the node over to it (a retry)
    {..., "f": "<error record>"}                    record this failure (Redis was down when
                                                    the node failed), do not run the node
    {..., "e": 1}                                   sent after the run's first resume

Nothing else of the graph travels with the message (the spec is loaded from the store),
so a message's size does not grow with the graph. Its task id is ``<run id>:<node id>``
(``...#<i>`` for an item, ``...@<j>`` for a chunk), which Flower shows; a message sent
after the run was resumed ``e`` times ends in ``~<e>``, so a revoke of an id of an earlier
epoch, which Celery's workers keep for hours, never discards it (docs/celery-controls.md).

A ``celery_graph.run_graph`` message (:class:`StartMessage`, a graph's signature:
``flow.s()``, a beat entry, a django-celery-beat row) is a submission, not a node message:
it carries what is needed to rebuild the graph when the store lost it, either the
compressed spec (bounded by :data:`EMBED_LIMIT`) or a flow reference. The node messages of
the run it starts carry ids only, as above.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeGuard

from .errors import MalformedMessage, RunNotStarted
from .keys import RUN_ID_RE

GRAPH_KWARG = "_graph"

CALL_TASK = "celery_graph.call"  # ran existing tasks as nodes; kept for stored graphs
RUN_GRAPH = "celery_graph.run_graph"  # starts a graph as a step of a Celery canvas
WAIT_TASK = "celery_graph.wait"  # the messages of wait_for() nodes (nothing is called)
ADOPTED = "_celery_graph_adopted"  # set on a task instance that runs node messages


def task_id_for(run_id: str, field: str, epoch: int = 0) -> str:
    """The task id of the message of ``field`` (a node id, ``<node>#<i>``, ``<node>@<j>``)
    sent in the run's ``epoch`` (how many times it was resumed before)."""
    base = f"{run_id}:{field}"
    return f"{base}~{epoch}" if epoch else base


_TASK_ID = re.compile(r"^(?P<run>[0-9a-f]{32}):(?P<field>[^~]+?)(?:~(?P<epoch>[0-9]{1,9}))?$")


@dataclass(frozen=True)
class NodeTaskId:
    """A node message's task id, parsed: ``<run id>:<field>[~<epoch>]``."""

    run_id: str
    field: str
    epoch: int = 0

    @property
    def node_id(self) -> str:
        return re.sub(r"[#@][0-9]+$", "", self.field)

    @classmethod
    def parse(cls, task_id: Any) -> NodeTaskId | None:
        """The parts of ``task_id``, or None when it is not a node message's id."""
        found = _TASK_ID.match(task_id) if isinstance(task_id, str) else None
        if found is None:
            return None
        return cls(found["run"], found["field"], int(found["epoch"] or 0))


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
    # the attempt that sent this message while it held the node (a retry, a message sent
    # again after an infrastructure error): begin.lua lets it take the node over
    holder: int = 0
    # how many times the run was resumed before this message was sent (its task id's
    # "~<epoch>" suffix)
    epoch: int = 0
    # sent while the call that releases the node (or creates the run) was on its way to
    # the graph Redis: a worker that finds it not released yet asks again shortly
    ahead: bool = False

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
            _field(fields, "g", is_graph_id, "a graph id (64 hex digits)", required=True),
            _field(fields, "r", _run_ids, "a run id (32 hex digits)", required=True),
            _field(fields, "n", _texts, "a node id", required=True),
            _field(fields, "t", _texts, "a task name"),
            _field(fields, "i", _counts, "an item index"),
            _field(fields, "c", _counts, "an item count"),
            _field(fields, "k", _counts, "a chunk size") or 0,
            _field(fields, "x", _counts, "a resend count") or 0,
            _field(fields, "f", _texts, "an error record"),
            _field(fields, "a", _counts, "an attempt number") or 0,
            _field(fields, "e", _counts, "an epoch") or 0,
            bool(_field(fields, "s", _counts, "1 for a message sent ahead of its release")),
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
        if self.holder:
            out["a"] = self.holder
        if self.epoch:
            out["e"] = self.epoch
        if self.ahead:
            out["s"] = 1
        return out

    def item(self, index: int, count: int, chunk: int = 0) -> NodeMessage:
        return replace(self, index=index, count=count, chunk=chunk, infra=0, failure=None, holder=0)

    def again(self, failure: str | None = None, holder: int = 0) -> NodeMessage:
        """This message to send again after an infrastructure error (carrying ``failure``
        to record, when the error hit while recording a failure; ``holder``, the attempt
        this delivery began, if it began one: else the message passes on the holder it
        carried)."""
        failure = failure or self.failure
        return replace(self, infra=self.infra + 1, failure=failure, holder=holder or self.holder)

    def held_by(self, attempt: int) -> NodeMessage:
        """This message as sent by ``attempt`` while it holds the node (a retry)."""
        return replace(self, holder=attempt)

    @property
    def unit(self) -> str:
        """ "<run id>:<result field>": the unit of work of this message, as a worker's
        heartbeat lists what it holds."""
        return f"{self.run_id}:{self.result_field}"

    @property
    def task_id(self) -> str:
        return task_id_for(self.run_id, self.result_field, self.epoch)

    @property
    def result_field(self) -> str:
        """The field of this message's unit of work, where its state and lease live (and
        its result, but for a chunk): the node id, "<node>#<i>" for an item of a map,
        "<node>@<j>" for a chunk of items."""
        if self.index is None:
            return self.node_id
        return f"{self.node_id}{'@' if self.chunk else '#'}{self.index}"


def _run_ids(value: Any) -> bool:
    return isinstance(value, str) and bool(RUN_ID_RE.match(value))


def _texts(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 1 << 20


def _counts(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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


# -- the run_graph message --------------------------------------------------------------

START_FORMAT = 2  # the newest format of run_graph's keyword arguments this version knows
EMBED_LIMIT = 128 * 1024  # most characters of a spec embedded in a run_graph message
SPEC_MAX_BYTES = 64 * 1024 * 1024  # an embedded spec that inflates past this is refused
_GRAPH_ID = re.compile(r"^[0-9a-f]{64}$")
_FIELDS = {0: {"graph", "inputs", "flow"}, 1: {"v", "graph", "inputs", "flow", "spec", "ref"}}
_FIELDS[2] = _FIELDS[1] | {"schedule"}  # 2: an entry of schedule() (format 1 without one)
OVERLAPS = ("skip", "buffer_one", "allow", "cancel_previous")
CRONTAB_FIELDS = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")


@dataclass(frozen=True)
class ScheduleSpec:
    """What a ``schedule()`` entry says about its schedule, in its run_graph message
    (``"schedule"``), so the worker that takes a fire can enforce the overlap policy and
    start the occurrences missed while beat was down::

        {"name": "nightly", "overlap": "skip", "catchup": 3600.0 or null,
         "every": {"seconds": 60.0} or {"crontab": {"minute": "0", "hour": "2", ...}}}
    """

    name: str
    overlap: str
    every: dict[str, Any]
    catchup: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "overlap": self.overlap,
            "every": self.every,
            "catchup": self.catchup,
        }

    @classmethod
    def parse(cls, data: Any) -> ScheduleSpec:
        """The schedule of a message; RunNotStarted naming what is wrong."""
        if not isinstance(data, dict):
            raise RunNotStarted(f"run_graph message: 'schedule' must be an object, got {data!r}")
        name, overlap, every = data.get("name"), data.get("overlap"), data.get("every")
        catchup = data.get("catchup")
        if not isinstance(name, str) or not 0 < len(name) <= 200:
            raise RunNotStarted(f"run_graph message: schedule 'name' must be a name, got {name!r}")
        if overlap not in OVERLAPS:
            raise RunNotStarted(
                f"run_graph message: schedule {name!r}: overlap {overlap!r} is not one of "
                f"{', '.join(OVERLAPS)}"
            )
        seconds = every.get("seconds") if isinstance(every, dict) else None
        cron = every.get("crontab") if isinstance(every, dict) else None
        ok_seconds = (
            isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds > 0
        )
        ok_cron = isinstance(cron, dict) and set(cron) == set(CRONTAB_FIELDS)
        if not isinstance(every, dict) or not (ok_seconds or ok_cron):
            raise RunNotStarted(
                f"run_graph message: schedule {name!r}: 'every' must be {{'seconds': N}} or "
                f"{{'crontab': {{{', '.join(CRONTAB_FIELDS)}}}}}, got {every!r}"
            )
        if catchup is not None and (
            not isinstance(catchup, (int, float)) or isinstance(catchup, bool) or catchup <= 0
        ):
            raise RunNotStarted(
                f"run_graph message: schedule {name!r}: 'catchup' must be a number of seconds "
                f"or null, got {catchup!r}"
            )
        return cls(name, overlap, dict(every), None if catchup is None else float(catchup))


def is_graph_id(value: Any) -> TypeGuard[str]:
    """True for a graph id: the sha256 of a spec's canonical bytes, as 64 hex digits."""
    return isinstance(value, str) and bool(_GRAPH_ID.match(value))


def embed_spec(blob: bytes) -> str:
    """A spec's canonical bytes as a JSON-safe text: base64 of their zlib compression."""
    return base64.b64encode(zlib.compress(blob, 9)).decode("ascii")


@dataclass(frozen=True)
class StartMessage:
    """The keyword arguments of a ``celery_graph.run_graph`` message (``flow.s().kwargs``),
    which Celery beat and django-celery-beat keep and send back as they are::

        {"v": 1,                       the format (absent: format 0, the first three only)
         "graph": "<sha256>",          the graph id
         "inputs": {"day": "x"},       run inputs
         "flow": "etl",                the flow name the run records (optional)
         "spec": "<base64 of zlib>"}   the canonical spec, to store again if it is gone
        or, instead of "spec",
         "ref": "proj.flows:etl"}      a flow that compiles to the graph
        and, format 2, an entry of ``schedule()``:
         "schedule": {...}             its :class:`ScheduleSpec`

    A field this version does not know, or a newer format, is refused (a worker never
    ignores what a newer producer asked for): the run is recorded as failed, naming it.
    """

    graph: str
    inputs: dict[str, Any]
    flow: str | None = None
    spec: str | None = None
    ref: str | None = None
    version: int = 1
    schedule: ScheduleSpec | None = None  # format 2: an entry of schedule()

    def kwargs(self) -> dict[str, Any]:
        # format 1 unless there is a schedule: workers of the previous release still read it
        version = max(self.version, 2 if self.schedule is not None else 1)
        out: dict[str, Any] = {"v": version, "graph": self.graph, "inputs": self.inputs}
        if self.flow:
            out["flow"] = self.flow
        if self.spec is not None:
            out["spec"] = self.spec
        if self.ref is not None:
            out["ref"] = self.ref
        if self.schedule is not None:
            out["schedule"] = self.schedule.as_dict()
        return out

    @classmethod
    def parse(cls, fields: dict[str, Any]) -> StartMessage:
        """The message in ``fields``; RunNotStarted naming the field that is wrong."""
        version = fields.get("v", 0)
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise RunNotStarted(f"run_graph message: format 'v' must be a number, got {version!r}")
        if version > START_FORMAT:
            raise RunNotStarted(
                f"run_graph message of format {version}, made by a newer celery-graph: this "
                f"worker reads formats up to {START_FORMAT}; upgrade the workers first"
            )
        unknown = sorted(set(fields) - _FIELDS[version])
        if unknown:
            raise RunNotStarted(
                f"run_graph message (format {version}): unknown field(s) "
                f"{', '.join(map(repr, unknown))}; expected {', '.join(sorted(_FIELDS[version]))}"
            )
        graph = fields.get("graph")
        if not is_graph_id(graph):
            raise RunNotStarted(
                f"run_graph message: 'graph' must be a graph id (64 hex digits), got {graph!r}"
            )
        inputs = fields.get("inputs", {})
        if not isinstance(inputs, dict) or not all(isinstance(k, str) for k in inputs):
            raise RunNotStarted(
                f"run_graph message: 'inputs' must be an object of run inputs, got {inputs!r}"
            )
        flow, spec, ref = fields.get("flow"), fields.get("spec"), fields.get("ref")
        for name, value in (("flow", flow), ("spec", spec), ("ref", ref)):
            if value is not None and not isinstance(value, str):
                raise RunNotStarted(
                    f"run_graph message: {name!r} must be a string, got {type(value).__name__}"
                )
        schedule = fields.get("schedule")
        parsed = ScheduleSpec.parse(schedule) if schedule is not None else None
        return cls(graph, dict(inputs), flow or None, spec, ref, version, parsed)

    def spec_bytes(self) -> bytes:
        """The canonical bytes of the embedded spec; RunNotStarted if they do not decode.
        (Whether they hash to :attr:`graph` is the caller's check.)"""
        if self.spec is None:
            raise RunNotStarted("run_graph message: no embedded spec")
        try:
            inflate = zlib.decompressobj()
            raw = inflate.decompress(
                base64.b64decode(self.spec.encode("ascii"), validate=True), SPEC_MAX_BYTES
            )
        except (binascii.Error, zlib.error, UnicodeEncodeError, ValueError) as exc:
            raise RunNotStarted(
                f"run_graph message: the embedded spec of graph {self.graph} does not decode "
                f"(base64 of zlib expected): {exc}"
            ) from exc
        if inflate.unconsumed_tail:  # a zlib bomb, or no spec celery-graph wrote
            raise RunNotStarted(
                f"run_graph message: the embedded spec of graph {self.graph} inflates to "
                f"more than {SPEC_MAX_BYTES} bytes: refused"
            )
        if not inflate.eof:
            raise RunNotStarted(
                f"run_graph message: the embedded spec of graph {self.graph} is truncated"
            )
        return raw
