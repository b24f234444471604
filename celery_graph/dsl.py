"""The graph DSL: immutable node values and the ``>>`` / ``|`` operators.

``a >> b`` runs b after a; ``a | b`` runs a and b in parallel; both nest freely::

    flow = extract >> (transform | audit) >> load

Inside ``with workflow("name") as wf:`` every ``>>`` and ``|`` statement is also recorded
into ``wf``, so statements like ``a >> b`` and ``a >> c`` build one graph.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import inspect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

from .errors import GraphDefinitionError, NotAGraphTaskError
from .keys import NODE_ID_RE

if TYPE_CHECKING:
    from .result import GraphRun
    from .spec import GraphSpec

_current_workflow: contextvars.ContextVar[Workflow | None] = contextvars.ContextVar(
    "celery_graph_workflow", default=None
)


class Flow:
    """Anything that can be composed and run: a node, a sequence, a group or a workflow."""

    def __rshift__(self, other: object) -> Sequence:
        result = Sequence((self, _as_flow(other, ">>")))
        _record(result)
        return result

    def __rrshift__(self, other: object) -> Sequence:
        result = Sequence((_as_flow(other, ">>"), self))
        _record(result)
        return result

    def __or__(self, other: object) -> Parallel:
        result = Parallel((self, _as_flow(other, "|")))
        _record(result)
        return result

    def __ror__(self, other: object) -> Parallel:
        result = Parallel((_as_flow(other, "|"), self))
        _record(result)
        return result

    def delay_by(self, seconds: float) -> Flow:
        """Start this flow's entry nodes no earlier than ``seconds`` after they become
        ready. The wait happens in the broker (a Celery countdown), not in a worker."""
        raise NotImplementedError

    # -- structure, used by the compiler -------------------------------------------
    def entries(self) -> list[TaskNode]:
        raise NotImplementedError

    def exits(self) -> list[TaskNode]:
        raise NotImplementedError

    def walk(self) -> Iterator[Flow]:
        """Every sub-flow, depth first, self included."""
        yield self

    def edges(self) -> Iterator[tuple[TaskNode, TaskNode]]:
        return iter(())

    # -- running ------------------------------------------------------------------
    def compile(self) -> GraphSpec:
        """Validate and compile to a GraphSpec (cached per value)."""
        from .spec import compile_flow

        return compile_flow(self)

    def apply_async(
        self,
        *,
        idempotency_key: str | None = None,
        deadline: float | None = None,
        **inputs: Any,
    ) -> GraphRun:
        """Start a run; other keyword arguments are run inputs. Returns at once.

        ``idempotency_key``: a second submission with the same key returns the run already
        started under it. ``deadline``: seconds after which the run fails. (A run input
        with one of these names can be passed with ``submit(inputs={...})``.)
        """
        return self.submit(inputs, idempotency_key=idempotency_key, deadline=deadline)

    def s(self, **inputs: Any) -> Any:
        """This graph as a Celery signature, for chains and groups::

            chain(fetch.s(), flow.s(limit=10), notify.s()).apply_async()

        The previous chain step's result feeds the run inputs (a dict is merged in, any
        other value becomes the input ``input``); the next step gets the graph's result.
        Needs a result backend for ``.get()`` on the canvas, like any Celery canvas.
        """
        from .canvas import graph_signature

        return graph_signature(self, inputs)

    def submit(
        self,
        inputs: dict[str, Any] | None = None,
        *,
        app: Any = None,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> GraphRun:
        """Start a run with ``inputs`` on ``app`` (default: Celery's current app)."""
        from .submit import submit

        return submit(
            self, inputs or {}, app=app, idempotency_key=idempotency_key, deadline=deadline
        )


def _as_flow(value: object, op: str) -> Flow:
    if isinstance(value, Flow):
        return value
    if isinstance(value, (list, tuple)) and value:
        flows = [_as_flow(v, op) for v in value]
        return flows[0] if len(flows) == 1 else Parallel(tuple(flows))
    what = getattr(value, "name", None) or type(value).__name__
    hint = ""
    if hasattr(value, "apply_async") and hasattr(value, "delay"):
        hint = " (a plain Celery task or signature; decorate the function with @celery_graph.task)"
    raise NotAGraphTaskError(f"cannot use {what!r} with {op!r}: not a celery-graph node{hint}")


@dataclass(frozen=True, eq=False)
class TaskNode(Flow):
    """A node that runs one celery-graph task. Calling it runs the function locally."""

    fn: Callable[..., Any]
    task_name: str
    id: str
    bound: tuple[tuple[str, Any], ...] = ()
    options: tuple[tuple[str, Any], ...] = ()  # routing options: queue, priority...
    delay: float = 0.0  # seconds between becoming ready and starting
    context: bool = False  # first parameter receives the RunContext
    map_over: tuple[str, str | None] | None = None  # (source node id, parameter)
    call: str | None = None  # an existing Celery task this node runs (see node())
    retries: tuple[int, float] | None = None  # (max retries on any error, delay in seconds)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def definition(self) -> tuple[Any, ...]:
        """What makes two nodes with one id the same node."""
        return (
            self.task_name, self.bound, self.options, self.delay, self.context, self.map_over,
            self.call, self.retries,
        )

    def with_retries(self, retries: int, *, delay: float = 1.0) -> TaskNode:
        """Retry this node on any error, up to ``retries`` times, ``delay`` seconds apart
        (on top of the task's own Celery retry options)."""
        if not isinstance(retries, int) or retries < 0 or delay < 0:
            raise GraphDefinitionError(
                f"node {self.id!r}: with_retries needs retries >= 0 and delay >= 0"
            )
        return dataclasses.replace(self, retries=(retries, float(delay)))

    def map(self, source: str | TaskNode, *, param: str | None = None) -> TaskNode:
        """Dynamic fan-out: one call per item of the list that upstream node ``source``
        returns, at run time. ``param`` (default: the parameter named like the source, or
        the only parameter nothing else fills) receives the item. The node's result, and
        what downstream nodes receive, is the list of results in item order; an empty list
        gives ``[]`` without calling the function.

        >>> split >> process.map("split") >> merge
        """
        source_id = source.id if isinstance(source, TaskNode) else source
        _check_node_id(source_id, f"{self.id}.map()")
        if param is not None and param not in _parameters(self.fn):
            raise GraphDefinitionError(
                f"node {self.id!r}: map(param={param!r}) is not a parameter of {self.task_name}"
            )
        return dataclasses.replace(self, map_over=(source_id, param))

    def delay_by(self, seconds: float) -> TaskNode:
        if not isinstance(seconds, (int, float)) or seconds < 0:
            raise GraphDefinitionError(
                f"node {self.id!r}: delay_by needs a non-negative number of seconds, "
                f"got {seconds!r}"
            )
        return dataclasses.replace(self, delay=float(seconds))

    def bind(self, id: str | None = None, **kwargs: Any) -> TaskNode:
        """A copy with another node id and/or bound keyword arguments.

        >>> fetch.bind(id="fetch_eu", region="eu") | fetch.bind(id="fetch_us", region="us")
        """
        node_id = self.id if id is None else id
        _check_node_id(node_id, self.task_name)
        params = _parameters(self.fn)
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

    @property
    def celery_task(self) -> Any:
        """The registered Celery task, for plain Celery use (``.delay()``, ``.s()``)."""
        from celery import current_app

        return current_app.tasks[self.task_name]

    @property
    def bound_kwargs(self) -> dict[str, Any]:
        return dict(self.bound)

    def entries(self) -> list[TaskNode]:
        return [self]

    def exits(self) -> list[TaskNode]:
        return [self]

    def __repr__(self) -> str:
        bound = "".join(f", {k}={v!r}" for k, v in self.bound)
        return f"<node {self.id} ({self.task_name}{bound})>"


@dataclass(frozen=True, eq=False)
class Sequence(Flow):
    """``a >> b >> c``: each step starts after every exit of the previous one."""

    steps: tuple[Flow, ...]

    def __post_init__(self) -> None:
        flat: list[Flow] = []
        for step in self.steps:
            flat.extend(step.steps if isinstance(step, Sequence) else (step,))
        object.__setattr__(self, "steps", tuple(flat))

    def delay_by(self, seconds: float) -> Sequence:
        return Sequence((self.steps[0].delay_by(seconds), *self.steps[1:]))

    def entries(self) -> list[TaskNode]:
        return self.steps[0].entries()

    def exits(self) -> list[TaskNode]:
        return self.steps[-1].exits()

    def walk(self) -> Iterator[Flow]:
        yield self
        for step in self.steps:
            yield from step.walk()

    def edges(self) -> Iterator[tuple[TaskNode, TaskNode]]:
        for step in self.steps:
            yield from step.edges()
        for before, after in zip(self.steps, self.steps[1:]):
            for src in before.exits():
                for dst in after.entries():
                    yield src, dst

    def __repr__(self) -> str:
        return "(" + " >> ".join(map(repr, self.steps)) + ")"


@dataclass(frozen=True, eq=False)
class Parallel(Flow):
    """``a | b | c``: members run in parallel. ``.named("batch")`` makes a named group."""

    members: tuple[Flow, ...]
    name: str | None = None
    # None: strict (any failing member fails the run); else a canonical policy dict as a
    # sorted tuple of items, e.g. (("kind", "at_least"), ("n", 2))
    policy: tuple[tuple[str, Any], ...] | None = None

    def __post_init__(self) -> None:
        if not self.members:
            raise GraphDefinitionError("empty parallel group: give it at least one member")
        flat: list[Flow] = []
        for member in self.members:
            if isinstance(member, Parallel) and member.name is None and member.policy is None:
                flat.extend(member.members)
            else:
                flat.append(member)
        object.__setattr__(self, "members", tuple(flat))

    def named(self, name: str) -> Parallel:
        """Name the group: a downstream parameter ``name`` gets the members' results."""
        _check_node_id(name, "group")
        return Parallel(self.members, name, self.policy)

    def with_policy(
        self,
        *,
        at_least: int | None = None,
        best_effort: bool = False,
        critical: tuple[Flow | str, ...] | list[Flow | str] = (),
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

    def entries(self) -> list[TaskNode]:
        return [n for m in self.members for n in m.entries()]

    def exits(self) -> list[TaskNode]:
        return [n for m in self.members for n in m.exits()]

    def walk(self) -> Iterator[Flow]:
        yield self
        for member in self.members:
            yield from member.walk()

    def edges(self) -> Iterator[tuple[TaskNode, TaskNode]]:
        for member in self.members:
            yield from member.edges()

    def __repr__(self) -> str:
        text = "(" + " | ".join(map(repr, self.members)) + ")"
        if self.name:
            text += f".named({self.name!r})"
        if self.policy:
            text += ".with_policy(" + ", ".join(f"{k}={v!r}" for k, v in self.policy) + ")"
        return text


class Workflow(Flow):
    """A graph accumulated from DSL statements inside ``with workflow(name) as wf:``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._parts: list[Flow] = []
        self._token: contextvars.Token[Workflow | None] | None = None

    def add(self, *flows: Flow) -> Workflow:
        """Add flows (for example a lone node) to the graph explicitly."""
        for f in flows:
            self._parts.append(_as_flow(f, "add"))
        return self

    @property
    def parts(self) -> tuple[Flow, ...]:
        return tuple(self._parts)

    def __enter__(self) -> Workflow:
        self._token = _current_workflow.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _current_workflow.reset(self._token)
            self._token = None

    def entries(self) -> list[TaskNode]:
        return [n for p in self._parts for n in p.entries()]

    def exits(self) -> list[TaskNode]:
        return [n for p in self._parts for n in p.exits()]

    def walk(self) -> Iterator[Flow]:
        yield self
        for part in self._parts:
            yield from part.walk()

    def edges(self) -> Iterator[tuple[TaskNode, TaskNode]]:
        for part in self._parts:
            yield from part.edges()

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


def _record(flow: Flow) -> None:
    wf = _current_workflow.get()
    if wf is not None and flow is not wf:
        wf._parts.append(flow)


def _check_node_id(node_id: str, what: str) -> None:
    if not isinstance(node_id, str) or not NODE_ID_RE.match(node_id):
        raise GraphDefinitionError(
            f"invalid node id {node_id!r} for {what}: use a Python-identifier-like name "
            "(letters, digits, '_', '.', '-'; no spaces, colons or braces)"
        )


@functools.lru_cache(maxsize=4096)
def _parameters(fn: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(fn).parameters)


# -- @task --------------------------------------------------------------------------

# Task options that decide where and in which order a message is delivered. They go into
# the spec, so any worker can publish a successor correctly without importing its module.
ROUTING_OPTIONS = ("queue", "routing_key", "exchange", "priority")


@overload
def task(fn: Callable[..., Any], /) -> TaskNode: ...
@overload
def task(
    *, name: str | None = None, **options: Any
) -> Callable[[Callable[..., Any]], TaskNode]: ...
def task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Declare a graph task. Registers a real Celery task (shared_task-style, so it attaches
    to your app and shows in Flower under its own name) and returns its graph node.

    Celery task options pass through: ``@task(queue="gpu", max_retries=3)``.
    """
    if fn is None:
        return lambda f: _make_task(f, options)
    return _make_task(fn, options)


def _module_name(fn: Callable[..., Any]) -> str:
    """The module name a worker importing this module would see: a script run as
    ``python quickstart.py`` names its tasks ``quickstart.*``, as ``celery -A quickstart``
    does."""
    module = fn.__module__
    if module != "__main__":
        return module
    import sys

    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return spec.name
    path = getattr(main, "__file__", None)
    return os.path.splitext(os.path.basename(path))[0] if path else module


def _make_task(fn: Callable[..., Any], options: dict[str, Any]) -> TaskNode:
    from celery import shared_task

    from .runtime import GraphTask, make_task_body

    if isinstance(fn, Flow):
        raise GraphDefinitionError(f"@task applied twice to {fn!r}")
    if not callable(fn):
        raise NotAGraphTaskError(f"@task needs a function, got {type(fn).__name__}")
    name = options.pop("name", None) or f"{_module_name(fn)}.{fn.__qualname__}"
    options.setdefault("base", GraphTask)
    routing = tuple(sorted((k, options[k]) for k in ROUTING_OPTIONS if k in options))
    context = bool(options.pop("inject_context", False))
    body = make_task_body(fn)
    shared_task(name=name, bind=True, **options)(body)
    node = TaskNode(fn, name, fn.__name__, (), routing, context=context)
    _check_node_id(node.id, name)
    object.__setattr__(node, "__doc__", fn.__doc__)
    object.__setattr__(node, "__wrapped__", fn)
    return node


# -- branch -------------------------------------------------------------------------


@dataclass(frozen=True)
class Branch:
    """What ``branch()`` returns; see there."""

    targets: tuple[str, ...]
    value: Any = None


def branch(*targets: str | TaskNode, value: Any = None) -> Branch:
    """Return this from a task to run only the named successors; the others are skipped
    (and so is everything that only they lead to). A join runs when at least one of its
    branches arrives; a skipped upstream's result is ``None``. ``value`` is the node's
    result. ``branch()`` with no target skips every successor.

    >>> @task
    ... def route(order):
    ...     return branch("express" if order["priority"] else "standard", value=order)
    """
    ids = tuple(t.id if isinstance(t, TaskNode) else t for t in targets)
    for t in ids:
        if not isinstance(t, str) or not NODE_ID_RE.match(t):
            raise GraphDefinitionError(f"branch(): {t!r} is not a node id")
    return Branch(ids, value)


# -- existing Celery tasks ----------------------------------------------------------

CALL_TASK = "celery_graph.call"


def node(task_or_signature: Any, *, id: str | None = None, **kwargs: Any) -> TaskNode:
    """Make an existing Celery task or signature a graph node, unchanged::

        resize = node(resize_image.s("cat.png", width=200), id="resize")
        flow = fetch >> resize >> publish

    Positional arguments of the signature are bound to the task's parameters by name,
    keyword arguments and ``**kwargs`` are bound too, and its options (queue, priority...)
    route the node. Upstream results fill parameters named after upstream nodes, as for
    ``@task``. The node runs through the ``celery_graph.call`` task, which calls the task's
    body in the worker: the worker must import both celery_graph and the task's module.
    """
    if isinstance(task_or_signature, TaskNode):
        return task_or_signature.bind(id=id, **kwargs)
    from celery import current_app
    from celery.canvas import Signature

    if isinstance(task_or_signature, Signature):
        name = task_or_signature.task
        args = tuple(task_or_signature.args or ())
        sig_kwargs = dict(task_or_signature.kwargs or {})
        sig_options = dict(task_or_signature.options or {})
    elif hasattr(task_or_signature, "name") and hasattr(task_or_signature, "run"):
        name, args, sig_kwargs, sig_options = task_or_signature.name, (), {}, {}
    else:
        raise NotAGraphTaskError(
            f"node() takes a Celery task or signature, got {type(task_or_signature).__name__}"
        )
    if not isinstance(name, str):
        raise NotAGraphTaskError(f"node(): signature {task_or_signature!r} names no task")
    try:
        target = current_app.tasks[name]
    except KeyError:
        raise NotAGraphTaskError(
            f"node(): task {name!r} is not registered on the current app; import its module"
        ) from None
    fn = target.run
    node_id = id or name.rsplit(".", 1)[-1]
    _check_node_id(node_id, name)
    try:
        bound = dict(inspect.signature(fn).bind_partial(*args, **sig_kwargs).arguments)
    except TypeError as exc:
        raise GraphDefinitionError(f"node {node_id!r}: arguments do not fit {name}: {exc}") from exc
    options = {k: getattr(target, k) for k in ROUTING_OPTIONS if getattr(target, k, None)}
    options.update({k: sig_options[k] for k in ROUTING_OPTIONS if k in sig_options})
    base = TaskNode(fn, CALL_TASK, node_id, (), tuple(sorted(options.items())), call=name)
    return base.bind(**bound, **kwargs)
