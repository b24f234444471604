"""The graph DSL: immutable node values and the ``>>`` / ``|`` operators.

``a >> b`` runs b after a; ``a | b`` runs a and b in parallel; both nest freely::

    flow = extract >> (transform | audit) >> load

Inside ``with workflow("name") as wf:`` every ``>>`` and ``|`` statement is also recorded
into ``wf``, so statements like ``a >> b`` and ``a >> c`` build one graph.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections import abc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar, cast, overload

from ..client import GraphRun, graph_signature, submit_spec
from ..errors import GraphDefinitionError, NotAGraphTaskError
from ..model import (
    AfterDecl,
    Declarations,
    GraphSpec,
    GroupDecl,
    NodeDecl,
    WaitSpec,
    compile_graph,
)
from .celery_api import CeleryTaskAPI
from .names import check_flow_name, check_node_id
from .signatures import parameters, signature_of

# The typing of the values (docs/dsl.md, "Typing"): a flow is generic in what its run's
# get() returns, a node also in its function's parameters.
P = ParamSpec("P")
R = TypeVar("R", covariant=True)  # the result of a run of the flow (its single sink's)
T = TypeVar("T")
# A list or tuple of flows in ``>>`` and ``|`` is a group (typed as a covariant sequence,
# so a list of nodes fits). On the left (``[a, b] >> c``) mypy types a literal list of
# different nodes as list[object] (it joins their parameter types to nothing), so there
# a list of objects is accepted too and _as_flow refuses what is not a flow, before
# anything is sent.
Flows = abc.Sequence["Flow[Any]"]
Objects = list[object] | tuple[object, ...]

_current_workflow: contextvars.ContextVar[Workflow | None] = contextvars.ContextVar(
    "celery_graph_workflow", default=None
)


class Flow(Generic[R]):
    """Anything that can be composed and run: a node, a sequence, a group or a workflow.
    ``R`` is what ``apply_async().get()`` returns: the single sink's result type, or
    ``dict[str, Any]`` for several sinks (see docs/dsl.md, "Typing")."""

    # ``a >> b`` is typed as b's result; a list or tuple (a group) as several sinks'
    @overload
    def __rshift__(self, other: Flow[T]) -> Sequence[T]: ...
    @overload
    def __rshift__(self, other: Flows) -> Sequence[dict[str, Any]]: ...
    def __rshift__(self, other: object) -> Sequence[Any]:
        result: Sequence[Any] = Sequence((self, _as_flow(other, ">>")))
        _record(result)
        return result

    @overload
    def __rrshift__(self, other: Flows) -> Sequence[R]: ...
    @overload
    def __rrshift__(self, other: Objects) -> Sequence[R]: ...
    def __rrshift__(self, other: object) -> Sequence[R]:
        result: Sequence[R] = Sequence((_as_flow(other, ">>"), self))
        _record(result)
        return result

    def __or__(self, other: Flow[Any] | Flows) -> Parallel:
        result = Parallel((self, _as_flow(other, "|")))
        _record(result)
        return result

    @overload
    def __ror__(self, other: Flows) -> Parallel: ...
    @overload
    def __ror__(self, other: Objects) -> Parallel: ...
    def __ror__(self, other: object) -> Parallel:
        result = Parallel((_as_flow(other, "|"), self))
        _record(result)
        return result

    def delay_by(self, seconds: float) -> Flow[R]:
        """Start this flow's entry nodes no earlier than ``seconds`` after they become
        ready. The wait happens in the broker (a Celery countdown), not in a worker."""
        raise NotImplementedError

    # -- structure, handed to the compiler as declarations ------------------------
    def entries(self) -> list[TaskNode[..., Any]]:
        raise NotImplementedError

    def exits(self) -> list[TaskNode[..., Any]]:
        raise NotImplementedError

    def walk(self) -> Iterator[Flow[Any]]:
        """Every sub-flow, depth first, self included."""
        yield self

    def edges(self) -> Iterator[tuple[TaskNode[..., Any], TaskNode[..., Any]]]:
        return iter(())

    # -- running ------------------------------------------------------------------
    def declarations(self) -> Declarations:
        """The graph as plain declarations: its nodes and groups in order, its edges."""
        parts: list[NodeDecl | GroupDecl] = []
        after: list[AfterDecl] = []
        for part in self.walk():
            decl = part.declaration() if isinstance(part, (TaskNode, Parallel)) else None
            if decl is not None:
                parts.append(decl)
            if isinstance(part, TaskNode) and part.undo is not None:
                after.append(AfterDecl("undo", part.undo.declaration(), part.id))
            if isinstance(part, Handled):
                after += [AfterDecl(kind, h.declaration()) for kind, h in part.handlers]
        edges = tuple((src.id, dst.id) for src, dst in self.edges())
        return Declarations(tuple(parts), edges, tuple(after))

    def compile(self) -> GraphSpec:
        """Validate and compile to a GraphSpec (cached per immutable value)."""
        cached: GraphSpec | None = getattr(self, "_compiled", None)
        if cached is not None:
            return cached
        spec = compile_graph(self.declarations())
        if not isinstance(self, Workflow):  # a workflow can still grow
            object.__setattr__(self, "_compiled", spec)
        return spec

    @property
    def flow_name(self) -> str | None:
        """The name runs of this flow record (the dashboard and the flow index list runs
        by it): a workflow's name, or the one given with :meth:`with_name`."""
        return None

    def on_failure(self, handler: TaskNode[..., Any]) -> Handled[R]:
        """Run ``handler`` once after a run of this flow has failed (a node failed after
        its retries, a group policy broke, the deadline passed), after the compensations;
        a parameter named ``failure`` receives ``{"run_id", "node", "exc_type",
        "exc_message"}``. The run's final state stays ``failed``, set when the handler has
        ended; a failing handler is recorded on the run and triggers nothing."""
        return Handled(self, (("failure", _handler(handler, "on_failure")),))

    def on_exit(self, handler: TaskNode[..., Any]) -> Handled[R]:
        """Run ``handler`` once when a run of this flow ends, however it ends (succeeded,
        failed, cancelled), last of all; a parameter named ``outcome`` receives
        ``{"run_id", "state"}``."""
        return Handled(self, (("exit", _handler(handler, "on_exit")),))

    def with_name(self, name: str) -> NamedFlow[R]:
        """This flow under a flow name, which every run of it records (``apply_async``,
        ``submit``, ``s()`` in a canvas or a beat schedule); name a flow once where it is
        defined::

            etl = (extract >> transform >> load).with_name("etl")
            etl.apply_async()          # run.status().flow == "etl"
        """
        return NamedFlow(self, check_flow_name(name))

    def with_concurrency(self, limit: int, key: str | None = None) -> NamedFlow[R]:
        """At most ``limit`` runs of this flow running at once in the deployment; with
        ``key`` (a run input's name), at most ``limit`` per distinct value of that input.
        Runs over the limit wait in state ``queued`` and start in submission order as
        slots free (docs/concurrency.md)::

            per_tenant = sync.with_concurrency(2, key="tenant")
            per_tenant.apply_async(tenant="acme")
        """
        limited = NamedFlow(self, None, (limit, key))
        limited.compile()  # a bad limit or key is an error now, not at the first run
        return limited

    def apply_async(
        self,
        *,
        idempotency_key: str | None = None,
        deadline: float | None = None,
        flow_name: str | None = None,
        **inputs: Any,
    ) -> GraphRun[R]:
        """Start a run; other keyword arguments are run inputs. Returns at once.

        ``idempotency_key``: a second submission with the same key returns the run already
        started under it. ``deadline``: seconds after which the run fails. ``flow_name``:
        the name the run records (default: :attr:`flow_name`). (A run input with one of
        these names can be passed with ``submit(inputs={...})``.)
        """
        return self.submit(
            inputs, idempotency_key=idempotency_key, deadline=deadline, flow_name=flow_name
        )

    def s(self, *, flow_name: str | None = None, flow_ref: str | None = None, **inputs: Any) -> Any:
        """This graph as a Celery signature, for chains, groups and beat entries::

            chain(fetch.s(), flow.s(limit=10), notify.s()).apply_async()
            app.conf.beat_schedule = {"nightly": {"task": sig.task, "kwargs": sig.kwargs, ...}}

        The previous chain step's result feeds the run inputs (a dict is merged in, any
        other value becomes the input ``input``); the next step gets the graph's result.
        Needs a result backend for ``.get()`` on the canvas, like any Celery canvas.

        The signature carries the compressed graph, so a worker that finds the stored
        graph gone (``graph_store_ttl``, a flushed or new Redis) stores it again; a graph
        too large for that (SignatureTooLarge) is named instead by ``flow_ref``, the
        ``MODULE:ATTR`` of this flow that workers import (docs/scheduling.md).
        """
        # graph errors and unknown inputs now; missing inputs may still come from the
        # previous chain step
        name = check_flow_name(flow_name) if flow_name is not None else self.flow_name
        spec = self.compile()
        spec.check_known_inputs(inputs)
        return graph_signature(spec, inputs, flow_name=name, flow_ref=flow_ref)

    def submit(
        self,
        inputs: dict[str, Any] | None = None,
        *,
        app: Any = None,
        idempotency_key: str | None = None,
        deadline: float | None = None,
        flow_name: str | None = None,
    ) -> GraphRun[R]:
        """Start a run with ``inputs`` on ``app`` (default: Celery's current app); the
        run records ``flow_name`` (default: :attr:`flow_name`)."""
        name = check_flow_name(flow_name) if flow_name is not None else self.flow_name
        return submit_spec(
            self.compile(),
            inputs or {},
            app,
            idempotency_key=idempotency_key,
            deadline=deadline,
            extra_fields={"flow": name} if name else None,
        )


def _as_flow(value: object, op: str) -> Flow[Any]:
    if isinstance(value, Flow):
        return value
    if isinstance(value, (list, tuple)) and value:
        flows = [_as_flow(v, op) for v in value]
        return flows[0] if len(flows) == 1 else Parallel(tuple(flows))
    what = getattr(value, "name", None) or type(value).__name__
    hint = ""
    if hasattr(value, "apply_async") and hasattr(value, "delay"):
        hint = (
            " (a plain Celery task or signature: wrap it as node(task) or node(task.s(...)) to "
            "run it under its own name, or decorate the function with @celery_graph.task)"
        )
    raise NotAGraphTaskError(f"cannot use {what!r} with {op!r}: not a celery-graph node{hint}")


@dataclass(frozen=True, eq=False)
class TaskNode(CeleryTaskAPI[P, R], Flow[R]):
    """A node that runs one celery-graph task. It composes (``>>``, ``|``, ``bind``,
    ``map``, ``delay_by``) and, used on its own, is Celery's task: ``delay``, ``s``,
    ``si``, ``signature``, ``apply_async``, ``apply``, ``AsyncResult`` and ``name`` act on
    the registered Celery task exactly as Celery's do (bound keyword arguments, if any,
    are passed too; the call's own keyword arguments win). Calling it runs the function
    locally.

    A one-node graph is ``node.as_graph()``: ``step.as_graph().apply_async(x=1)`` returns
    a GraphRun where ``step.apply_async(...)`` returns Celery's AsyncResult. Celery's
    ``Task.map`` and ``Task.bind`` are reachable as ``node.celery_task.map(...)``; on the
    node, ``map`` is the graph's dynamic fan-out and ``bind`` binds node arguments.
    """

    fn: Callable[P, R]
    task_name: str
    id: str
    bound: tuple[tuple[str, Any], ...] = ()
    options: tuple[tuple[str, Any], ...] = ()  # routing options: queue, priority...
    # seconds between becoming ready and starting (set with delay_by(); named so that
    # ``delay`` stays Celery's Task.delay)
    start_delay: float = 0.0
    context: bool = False  # first parameter receives the RunContext
    map_over: tuple[str, str | None] | None = None  # (source node id, parameter)
    map_chunk: int = 0  # items per message of the fan-out (0: one message per item)
    call: str | None = None  # an existing Celery task this node runs (see node())
    retries: tuple[int, float] | None = None  # (max retries on any error, delay in seconds)
    undo: TaskNode[..., Any] | None = None  # its compensation (see compensate())
    wait: WaitSpec | None = None  # a wait_for() node

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def declaration(self) -> NodeDecl:
        """This node for the compiler; two nodes with one id must declare the same."""
        return NodeDecl(
            id=self.id,
            task=self.task_name,
            params=parameters(self.fn),
            bound=self.bound,
            options=self.options,
            delay=self.start_delay,
            context=self.context,
            map_over=self.map_over,
            map_chunk=self.map_chunk,
            call=self.call,
            retries=self.retries,
            wait=self.wait,
        )

    def with_retries(self, retries: int, *, delay: float = 1.0) -> TaskNode[P, R]:
        """Retry this node on any error, up to ``retries`` times, ``delay`` seconds apart
        (on top of the task's own Celery retry options)."""
        if not isinstance(retries, int) or retries < 0 or delay < 0:
            raise GraphDefinitionError(
                f"node {self.id!r}: with_retries needs retries >= 0 and delay >= 0"
            )
        return dataclasses.replace(self, retries=(retries, float(delay)))

    def map(
        self,
        source: str | TaskNode[..., Any],
        *,
        param: str | None = None,
        chunk: int | None = None,
    ) -> TaskNode[P, list[R]]:
        """Dynamic fan-out: one call per item of the list that upstream node ``source``
        returns, at run time. ``param`` (default: the parameter named like the source, or
        the only parameter nothing else fills) receives the item. The node's result, and
        what downstream nodes receive, is the list of results in item order; an empty list
        gives ``[]`` without calling the function.

        ``chunk=N`` sends one message per N items (fewer, bigger messages for many small
        items); the function is still called once per item, each item's result is kept
        as it finishes, and a chunk delivered again skips the items already done.

        >>> split >> process.map("split") >> merge
        """
        source_id = source.id if isinstance(source, TaskNode) else source
        if chunk is not None and (
            not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1
        ):
            raise GraphDefinitionError(
                f"node {self.id!r}: map(chunk={chunk!r}) needs a whole number of items >= 1"
            )
        check_node_id(source_id, f"{self.id}.map()")
        if param is not None and param not in signature_of(self.fn):
            raise GraphDefinitionError(
                f"node {self.id!r}: map(param={param!r}) is not a parameter of {self.task_name}"
            )
        mapped = dataclasses.replace(self, map_over=(source_id, param), map_chunk=chunk or 0)
        return cast("TaskNode[P, list[R]]", mapped)  # its result is the items' results

    def compensate(self, undo: TaskNode[..., Any]) -> TaskNode[P, R]:
        """Saga: if the run fails after this node succeeded, ``undo`` runs once, receiving
        this node's result in its parameter named after this node's id. Compensations run
        in reverse order of completion, before ``on_failure``; one that fails is recorded
        and the others still run.

        >>> charge.compensate(refund) >> ship    # def refund(charge): ...
        """
        return dataclasses.replace(self, undo=_handler(undo, f"{self.id}.compensate"))

    def delay_by(self, seconds: float) -> TaskNode[P, R]:
        if not isinstance(seconds, (int, float)) or seconds < 0:
            raise GraphDefinitionError(
                f"node {self.id!r}: delay_by needs a non-negative number of seconds, "
                f"got {seconds!r}"
            )
        return dataclasses.replace(self, start_delay=float(seconds))

    def bind(self, id: str | None = None, **kwargs: Any) -> TaskNode[P, R]:
        """A copy with another node id and/or bound keyword arguments.

        >>> fetch.bind(id="fetch_eu", region="eu") | fetch.bind(id="fetch_us", region="us")
        """
        node_id = self.id if id is None else id
        check_node_id(node_id, self.task_name)
        params = signature_of(self.fn)
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        for name in kwargs:
            if name not in params and not accepts_any:
                raise GraphDefinitionError(
                    f"node {node_id!r}: bind() got {name!r}, which is not a parameter of "
                    f"{self.task_name} (parameters: {', '.join(params) or 'none'})"
                )
        merged = dict(self.bound)
        merged.update(kwargs)
        return dataclasses.replace(self, id=node_id, bound=tuple(sorted(merged.items())))

    def as_graph(self, name: str | None = None) -> NamedFlow[R]:
        """This node as a one-node graph, whose ``apply_async(**inputs)`` and ``s()`` start
        a graph run (``name``: the flow name its runs record)."""
        return NamedFlow(self, None if name is None else check_flow_name(name))

    def entries(self) -> list[TaskNode[..., Any]]:
        return [self]

    def exits(self) -> list[TaskNode[..., Any]]:
        return [self]

    def __repr__(self) -> str:
        bound = "".join(f", {k}={v!r}" for k, v in self.bound)
        return f"<node {self.id} ({self.task_name}{bound})>"


@dataclass(frozen=True, eq=False)
class Sequence(Flow[R]):
    """``a >> b >> c``: each step starts after every exit of the previous one."""

    parts: tuple[Flow[Any], ...]  # as written; nested sequences are flattened by ``steps``

    @property
    def steps(self) -> tuple[Flow[Any], ...]:
        """The steps, nested sequences flattened (once, on first use: ``>>`` stays O(1),
        so a chain built step by step costs linear time)."""
        steps = self.__dict__.get("_steps")
        if steps is None:
            steps = _flatten(self, lambda f: isinstance(f, Sequence))
            object.__setattr__(self, "_steps", steps)
        return steps

    def delay_by(self, seconds: float) -> Sequence[R]:
        return Sequence((self.steps[0].delay_by(seconds), *self.steps[1:]))

    def entries(self) -> list[TaskNode[..., Any]]:
        return self.steps[0].entries()

    def exits(self) -> list[TaskNode[..., Any]]:
        return self.steps[-1].exits()

    def walk(self) -> Iterator[Flow[Any]]:
        yield self
        for step in self.steps:
            yield from step.walk()

    def edges(self) -> Iterator[tuple[TaskNode[..., Any], TaskNode[..., Any]]]:
        for step in self.steps:
            yield from step.edges()
        for before, after in zip(self.steps, self.steps[1:]):
            for src in before.exits():
                for dst in after.entries():
                    yield src, dst

    def __repr__(self) -> str:
        return "(" + " >> ".join(map(repr, self.steps)) + ")"


@dataclass(frozen=True, eq=False)
class Parallel(Flow[dict[str, Any]]):
    """``a | b | c``: members run in parallel. ``.named("batch")`` makes a named group."""

    parts: tuple[Flow[Any], ...]  # as written; unnamed groups inside are flattened by ``members``
    name: str | None = None
    # None: strict (any failing member fails the run); else a canonical policy dict as a
    # sorted tuple of items, e.g. (("kind", "at_least"), ("n", 2))
    policy: tuple[tuple[str, Any], ...] | None = None

    def __post_init__(self) -> None:
        if not self.parts:
            raise GraphDefinitionError("empty parallel group: give it at least one member")

    @property
    def members(self) -> tuple[Flow[Any], ...]:
        """The members, unnamed groups without a policy flattened (once, on first use:
        ``|`` stays O(1), so a group built member by member costs linear time)."""
        members = self.__dict__.get("_members")
        if members is None:
            members = _flatten(self, _plain_group)
            object.__setattr__(self, "_members", members)
        return members

    def named(self, name: str) -> Parallel:
        """Name the group: a downstream parameter ``name`` gets the members' results."""
        check_node_id(name, "group")
        return Parallel(self.members, name, self.policy)

    def with_policy(
        self,
        *,
        at_least: int | None = None,
        best_effort: bool = False,
        critical: tuple[Flow[Any] | str, ...] | list[Flow[Any] | str] = (),
    ) -> Parallel:
        """Let some members fail without failing the run (strict is the default).

        ``best_effort=True``: any member may fail. ``at_least=N``: N members must succeed.
        ``critical=[a, b]``: those must succeed, the others may fail. Downstream, a failed
        member's result is ``None``; its error stays visible in ``run.status()``. A run whose
        policy can no longer be met fails at once, naming the group and failed members.

        >>> (fetch_eu | fetch_us | fetch_ap).with_policy(at_least=2) >> merge
        """
        chosen = [at_least is not None, best_effort, bool(critical)]
        if sum(chosen) != 1:
            raise GraphDefinitionError(
                "with_policy takes exactly one of at_least=N, best_effort=True, critical=[...]"
            )
        for m in self.members:
            if not isinstance(m, TaskNode):
                raise GraphDefinitionError(
                    f"with_policy: member {m!r} is not a single node; put sequences in their "
                    "own workflow or give the policy to a group of nodes"
                )
        ids = [m.id for m in self.members if isinstance(m, TaskNode)]
        policy: dict[str, Any]
        if at_least is not None:
            if not 1 <= at_least <= len(ids):
                raise GraphDefinitionError(
                    f"with_policy(at_least={at_least}): must be between 1 and {len(ids)} members"
                )
            policy = {"kind": "at_least", "n": at_least}
        elif best_effort:
            policy = {"kind": "best_effort"}
        else:
            names = [c.id if isinstance(c, TaskNode) else c for c in critical]
            unknown = [c for c in names if c not in ids]
            if unknown:
                raise GraphDefinitionError(
                    f"with_policy(critical=...): {unknown} are not members of {self!r}"
                )
            policy = {"kind": "critical", "critical": sorted(names)}
        return Parallel(self.members, self.name, tuple(sorted(policy.items())))

    def delay_by(self, seconds: float) -> Parallel:
        return Parallel(tuple(m.delay_by(seconds) for m in self.members), self.name, self.policy)

    def declaration(self) -> GroupDecl | None:
        """This group for the compiler; only a name or a policy makes it more than edges."""
        if not (self.name or self.policy):
            return None
        return GroupDecl(
            name=self.name,
            trees=tuple(_member_tree(m) for m in self.members) if self.name else (),
            node_members=tuple(m.id for m in self.members if isinstance(m, TaskNode)),
            policy=self.policy,
        )

    def entries(self) -> list[TaskNode[..., Any]]:
        return [n for m in self.members for n in m.entries()]

    def exits(self) -> list[TaskNode[..., Any]]:
        return [n for m in self.members for n in m.exits()]

    def walk(self) -> Iterator[Flow[Any]]:
        yield self
        for member in self.members:
            yield from member.walk()

    def edges(self) -> Iterator[tuple[TaskNode[..., Any], TaskNode[..., Any]]]:
        for member in self.members:
            yield from member.edges()

    def __repr__(self) -> str:
        text = "(" + " | ".join(map(repr, self.members)) + ")"
        if self.name:
            text += f".named({self.name!r})"
        if self.policy:
            text += ".with_policy(" + ", ".join(f"{k}={v!r}" for k, v in self.policy) + ")"
        return text


@dataclass(frozen=True, eq=False)
class NamedFlow(Flow[R]):
    """A flow under a flow name (``flow.with_name("etl")``, ``node.as_graph()``): the same
    graph; its runs record the name. Composing it with others makes a new, unnamed flow."""

    flow: Flow[R]
    name: str | None = None
    concurrency: tuple[int, str | None] | None = None  # with_concurrency(limit, key)

    @property
    def flow_name(self) -> str | None:
        return self.name or self.flow.flow_name

    def compile(self) -> GraphSpec:
        """The wrapped flow's graph, with this flow's concurrency limit when it has one."""
        cached: GraphSpec | None = getattr(self, "_compiled", None)
        if cached is not None:
            return cached
        spec = self.flow.compile()
        if self.concurrency is not None:
            spec = spec.limited(*self.concurrency)
        if not isinstance(self.flow, Workflow):  # a workflow can still grow
            object.__setattr__(self, "_compiled", spec)
        return spec

    def delay_by(self, seconds: float) -> NamedFlow[R]:
        return NamedFlow(self.flow.delay_by(seconds), self.name, self.concurrency)

    def entries(self) -> list[TaskNode[..., Any]]:
        return self.flow.entries()

    def exits(self) -> list[TaskNode[..., Any]]:
        return self.flow.exits()

    def walk(self) -> Iterator[Flow[Any]]:
        yield self
        yield from self.flow.walk()

    def edges(self) -> Iterator[tuple[TaskNode[..., Any], TaskNode[..., Any]]]:
        return self.flow.edges()

    def __repr__(self) -> str:
        text = f"{self.flow!r}.with_name({self.name!r})" if self.name else repr(self.flow)
        if self.concurrency is not None:
            limit, key = self.concurrency
            text += f".with_concurrency({limit!r}, key={key!r})"
        return text


@dataclass(frozen=True, eq=False)
class Handled(Flow[R]):
    """A flow with handlers that follow the end of its runs (``on_failure``,
    ``on_exit``); the same graph otherwise."""

    flow: Flow[R]
    handlers: tuple[tuple[str, TaskNode[..., Any]], ...]

    def on_failure(self, handler: TaskNode[..., Any]) -> Handled[R]:
        return Handled(self.flow, (*self.handlers, ("failure", _handler(handler, "on_failure"))))

    def on_exit(self, handler: TaskNode[..., Any]) -> Handled[R]:
        return Handled(self.flow, (*self.handlers, ("exit", _handler(handler, "on_exit"))))

    @property
    def flow_name(self) -> str | None:
        return self.flow.flow_name

    def delay_by(self, seconds: float) -> Handled[R]:
        return Handled(self.flow.delay_by(seconds), self.handlers)

    def entries(self) -> list[TaskNode[..., Any]]:
        return self.flow.entries()

    def exits(self) -> list[TaskNode[..., Any]]:
        return self.flow.exits()

    def walk(self) -> Iterator[Flow[Any]]:
        yield self
        yield from self.flow.walk()

    def edges(self) -> Iterator[tuple[TaskNode[..., Any], TaskNode[..., Any]]]:
        return self.flow.edges()

    def __repr__(self) -> str:
        kinds = {"failure": "on_failure", "exit": "on_exit"}
        return repr(self.flow) + "".join(f".{kinds[k]}({h!r})" for k, h in self.handlers)


def _handler(value: object, what: str) -> TaskNode[..., Any]:
    if not isinstance(value, TaskNode):
        raise NotAGraphTaskError(
            f"{what}({value!r}): a handler is one celery-graph node (an @task function, "
            "or node(existing_task))"
        )
    return value


class Workflow(Flow[Any]):
    """A graph accumulated from DSL statements inside ``with workflow(name) as wf:``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._parts: list[Flow[Any]] = []
        self._token: contextvars.Token[Workflow | None] | None = None

    def add(self, *flows: Flow[Any]) -> Workflow:
        """Add flows (for example a lone node) to the graph explicitly."""
        for f in flows:
            self._parts.append(_as_flow(f, "add"))
        return self

    @property
    def parts(self) -> tuple[Flow[Any], ...]:
        return tuple(self._parts)

    def __enter__(self) -> Workflow:
        self._token = _current_workflow.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _current_workflow.reset(self._token)
            self._token = None

    def entries(self) -> list[TaskNode[..., Any]]:
        return [n for p in self._parts for n in p.entries()]

    def exits(self) -> list[TaskNode[..., Any]]:
        return [n for p in self._parts for n in p.exits()]

    def walk(self) -> Iterator[Flow[Any]]:
        yield self
        for part in self._parts:
            yield from part.walk()

    def edges(self) -> Iterator[tuple[TaskNode[..., Any], TaskNode[..., Any]]]:
        for part in self._parts:
            yield from part.edges()

    @property
    def flow_name(self) -> str | None:
        return self.name

    def __repr__(self) -> str:
        return f"<workflow {self.name!r}: {len(self._parts)} statements>"


def workflow(name: str) -> Workflow:
    """Collect DSL statements into one graph::

    with workflow("etl") as wf:
        extract >> transform >> load
        extract >> audit >> load        # the same nodes: load becomes a join
    wf.apply_async()
    """
    return Workflow(name)


def _plain_group(flow: Flow[Any]) -> bool:
    return isinstance(flow, Parallel) and flow.name is None and flow.policy is None


def _flatten(
    root: Sequence[Any] | Parallel, inline: Callable[[Flow[Any]], bool]
) -> tuple[Flow[Any], ...]:
    """The parts of ``root``, with every part for which ``inline`` is true replaced by its
    own parts, depth first, in order (iteratively: a long chain of ``|`` nests deeply)."""
    out: list[Flow[Any]] = []
    stack = [iter(root.parts)]
    while stack:
        part = next(stack[-1], None)
        if part is None:
            stack.pop()
        elif inline(part):
            stack.append(iter(part.parts))  # type: ignore[attr-defined]
        else:
            out.append(part)
    return tuple(out)


def _record(flow: Flow[Any]) -> None:
    wf = _current_workflow.get()
    if wf is not None and flow is not wf:
        wf._parts.append(flow)


def _member_tree(flow: Flow[Any]) -> Any:
    """The result shape of a group member: a node's id, a sequence's last step, a list."""
    if isinstance(flow, TaskNode):
        return flow.id
    if isinstance(flow, Sequence):
        return _member_tree(flow.steps[-1])
    if isinstance(flow, (NamedFlow, Handled)):
        return _member_tree(flow.flow)
    if isinstance(flow, Parallel):
        return [_member_tree(m) for m in flow.members]
    exits = flow.exits()
    return exits[0].id if len(exits) == 1 else [e.id for e in exits]
