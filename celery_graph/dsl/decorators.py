"""The decorators and helpers that make graph nodes: ``@task``, ``node()`` and ``branch()``."""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar, overload

from celery import Task, current_app, shared_task
from celery.canvas import Signature

from ..compat import check_task_options
from ..errors import GraphDefinitionError, NotAGraphTaskError
from ..executor import GraphTask, adopt
from ..executor.gate import check_limits
from ..keys import NODE_ID_RE
from ..protocol import Branch
from ..signals import graph_task_declared
from .values import Flow, TaskNode, check_node_id

# -- @task --------------------------------------------------------------------------

# Task options that decide where and in which order a message is delivered. They go into
# the spec, so any worker can publish a successor correctly without importing its module.
ROUTING_OPTIONS = ("queue", "routing_key", "exchange", "priority")

P = ParamSpec("P")
R = TypeVar("R")

# The node keeps the function's parameters and return type (docs/dsl.md, "Typing").
# bind=True: Celery passes the task first, so the node's parameters leave it out.
# pydantic=True: Celery converts arguments and dumps a model result to a dict, so the
# node's types are the function's no longer. A bool that is not a literal: either.


@overload
def task(fn: Callable[P, R], /) -> TaskNode[P, R]: ...
@overload
def task(
    *,
    name: str | None = None,
    queue: str | None = None,
    priority: int | None = None,
    inject_context: bool = False,
    bind: Literal[False] = False,
    pydantic: Literal[False] = False,
    **options: Any,
) -> Callable[[Callable[P, R]], TaskNode[P, R]]: ...
@overload
def task(
    *,
    bind: Literal[True],
    name: str | None = None,
    queue: str | None = None,
    priority: int | None = None,
    pydantic: Literal[False] = False,
    **options: Any,
) -> Callable[[Callable[Concatenate[Any, P], R]], TaskNode[P, R]]: ...
@overload
def task(
    *,
    pydantic: bool,
    name: str | None = None,
    queue: str | None = None,
    priority: int | None = None,
    **options: Any,
) -> Callable[[Callable[..., Any]], TaskNode[..., Any]]: ...
@overload
def task(
    *,
    bind: bool,
    name: str | None = None,
    queue: str | None = None,
    priority: int | None = None,
    **options: Any,
) -> Callable[[Callable[..., Any]], TaskNode[..., Any]]: ...
def task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Declare a graph task. Registers a real Celery task (shared_task-style, so it attaches
    to your app and shows in Flower under its own name) and returns its graph node, which
    keeps Celery's Task API for plain use (see :class:`TaskNode` and docs/tasks.md)::

        @task(queue="gpu", rate_limit="10/s", pydantic=True)
        def resize(image: Image) -> Thumb: ...

        resize.delay(img)                       # Celery: an AsyncResult
        (fetch >> resize).apply_async()         # a graph run: a GraphRun

    Every Celery task option passes through (``bind``, ``pydantic``, ``rate_limit``,
    ``time_limit``, ``queue``, ``autoretry_for``...). The task name is ``name=`` or what
    the current app's ``gen_task_name`` makes of the function's module and name. Only
    ``inject_context=True`` is celery-graph's own: the first parameter receives the run's
    :class:`RunContext` when the task runs in a graph; and ``graph_concurrency=N`` /
    ``graph_rate_limit="100/m"``, limits of the task's nodes across every worker
    (docs/concurrency.md).
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
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return spec.name
    path = getattr(main, "__file__", None)
    return os.path.splitext(os.path.basename(path))[0] if path else module


def _graph_base(base: type) -> type:
    """``base`` made able to run node messages: a user's own base class keeps all it does
    and gains GraphTask (after it in the MRO, so the user's settings win)."""
    if issubclass(base, GraphTask):
        return base
    if not (isinstance(base, type) and issubclass(base, Task)):
        raise GraphDefinitionError(f"@task(base={base!r}): base must be a Celery Task class")
    return type(base.__name__, (base, GraphTask), {"__module__": base.__module__})


def _make_task(fn: Callable[..., Any], options: dict[str, Any]) -> TaskNode[..., Any]:
    if isinstance(fn, Flow):
        raise GraphDefinitionError(f"@task applied twice to {fn!r}")
    if not callable(fn):
        raise NotAGraphTaskError(f"@task needs a function, got {type(fn).__name__}")
    check_task_options(f"@task({fn.__qualname__})", options)  # pydantic=True: Celery 5.5+
    check_limits(f"@task({fn.__qualname__})", options)
    options = dict(options)
    name = options.pop("name", None) or current_app.gen_task_name(fn.__qualname__, _module_name(fn))
    options["base"] = _graph_base(options.get("base") or GraphTask)
    routing = tuple(sorted((k, options[k]) for k in ROUTING_OPTIONS if k in options))
    context = bool(options.pop("inject_context", False))
    bind = bool(options.get("bind"))
    if bind and context:
        raise GraphDefinitionError(
            f"@task({fn.__qualname__}): bind=True and inject_context=True both claim the "
            "first parameter; use one of them"
        )
    shared_task(name=name, **options)(fn)
    graph_task_declared.send(sender=fn)  # worker options and bootstep on the apps now
    local = fn
    if bind or options.get("pydantic"):
        local = _through_celery(fn, name, bind)
    node: TaskNode[..., Any] = TaskNode(local, name, fn.__name__, (), routing, context=context)
    check_node_id(node.id, name)
    object.__setattr__(node, "__doc__", fn.__doc__)
    object.__setattr__(node, "__wrapped__", fn)
    return node


def _through_celery(fn: Callable[..., Any], name: str, bind: bool) -> Callable[..., Any]:
    """The node's function for a task that needs Celery to be called (``bind=True``:
    the task is its first argument; ``pydantic=True``: arguments are validated): a local
    call goes through the registered task, and the graph sees the parameters without
    ``self``."""

    def local(*args: Any, **kwargs: Any) -> Any:
        return current_app.tasks[name](*args, **kwargs)

    sig = inspect.signature(fn)
    if bind:
        sig = sig.replace(parameters=list(sig.parameters.values())[1:])
    local.__signature__ = sig  # type: ignore[attr-defined]
    local.__name__ = fn.__name__
    local.__qualname__ = fn.__qualname__
    local.__module__ = fn.__module__
    local.__doc__ = fn.__doc__
    return local


# -- branch -------------------------------------------------------------------------


def branch(*targets: str | TaskNode[..., Any], value: Any = None) -> Branch:
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


@overload
def node(
    task_or_signature: TaskNode[P, R], *, id: str | None = None, **kwargs: Any
) -> TaskNode[P, R]: ...
@overload
def node(task_or_signature: Any, *, id: str | None = None, **kwargs: Any) -> TaskNode[..., Any]: ...
def node(task_or_signature: Any, *, id: str | None = None, **kwargs: Any) -> TaskNode[..., Any]:
    """Make an existing Celery task or signature a graph node, unchanged::

        resize = node(resize_image.s("cat.png", width=200), id="resize")
        flow = fetch >> resize >> publish

    Positional arguments of the signature are bound to the task's parameters by name,
    keyword arguments and ``**kwargs`` are bound too, and its options (queue, priority...)
    route the node. Upstream results fill parameters named after upstream nodes, as for
    ``@task``. The node's message is sent to the task's own name, so its routes
    (``task_routes``, its ``queue``), rate limit, time limits and retries apply and Flower
    lists it under its own name. A worker of an app that uses celery-graph (a graph task
    declared, or ``celery_graph.install(app)``) lets every task of its app run node
    messages (see ``executor.adopt``). The task's own code is unchanged and keeps working
    when called plainly.
    """
    if isinstance(task_or_signature, TaskNode):
        return task_or_signature.bind(id=id, **kwargs)
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
    adopt(target)  # in this process too (an in-process worker, a local apply())
    graph_task_declared.send(sender=target)  # worker options and bootstep on the apps now
    fn = target.run
    node_id = id or name.rsplit(".", 1)[-1]
    check_node_id(node_id, name)
    try:
        bound = dict(inspect.signature(fn).bind_partial(*args, **sig_kwargs).arguments)
    except TypeError as exc:
        raise GraphDefinitionError(f"node {node_id!r}: arguments do not fit {name}: {exc}") from exc
    options = {k: getattr(target, k) for k in ROUTING_OPTIONS if getattr(target, k, None)}
    options.update({k: sig_options[k] for k in ROUTING_OPTIONS if k in sig_options})
    base: TaskNode[..., Any] = TaskNode(fn, name, node_id, (), tuple(sorted(options.items())))
    return base.bind(**bound, **kwargs)
