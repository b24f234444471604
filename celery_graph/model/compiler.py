"""Compile declarations into a validated, canonical GraphSpec.

The DSL hands down plain declarations (what each node is, which groups exist, which edges
join them); nothing here knows the DSL's values, Celery or Redis. Every mistake a graph
can hold is raised here, before anything is stored or sent.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..codec import canonical, is_json, sha256
from ..errors import (
    CycleError,
    DuplicateNodeError,
    GraphDefinitionError,
    MissingParameterError,
    SerializationError,
)
from .spec import SPEC_VERSION, GraphSpec, GroupTree, tree_ids

VARIADIC = ("VAR_POSITIONAL", "VAR_KEYWORD")


@dataclass(frozen=True)
class Param:
    """One parameter of a node's function; ``kind`` is an ``inspect.Parameter`` kind name."""

    name: str
    kind: str
    has_default: bool

    @property
    def variadic(self) -> bool:
        return self.kind in VARIADIC


@dataclass(frozen=True)
class ResultOf:
    """A bound value that is the result of node or named group ``source`` of the same
    graph, upstream of the bound node. The compiler turns it into a pull (parameter ->
    source id), so the node's message carries the id, never the value."""

    source: str

    def __repr__(self) -> str:
        return f"result_of({self.source!r})"


@dataclass(frozen=True)
class WaitSpec:
    """What a ``wait_for`` node waits for: a signal of its own id, for at most
    ``timeout`` seconds (None: for ever)."""

    timeout: float | None = None


@dataclass(frozen=True)
class NodeDecl:
    """One node as the DSL declares it. Two declarations with one id must be equal."""

    id: str
    task: str
    params: tuple[Param, ...]
    bound: tuple[tuple[str, Any], ...] = ()  # values, or ResultOf for an upstream result
    options: tuple[tuple[str, Any], ...] = ()
    delay: float = 0.0
    context: bool = False
    map_over: tuple[str, str | None] | None = None  # (source node id, parameter)
    map_chunk: int = 0  # items per message of the fan-out (0: one per item)
    call: str | None = None
    retries: tuple[int, float] | None = None
    wait: WaitSpec | None = None  # a wait_for() node: completes when the run is signalled

    def __str__(self) -> str:
        bound = "".join(f", {k}={v!r}" for k, v in self.bound)
        return f"<node {self.id} ({self.task}{bound})>"


@dataclass(frozen=True)
class GroupDecl:
    """A parallel group that has a name, a failure policy, or both."""

    name: str | None
    trees: tuple[GroupTree, ...]  # the result shape of each member (a named group's value)
    node_members: tuple[str, ...]  # ids of the members that are single nodes
    policy: tuple[tuple[str, Any], ...] | None = None


@dataclass(frozen=True)
class AfterDecl:
    """A step that follows the end of a run: the failure handler (``kind`` "failure"),
    the exit handler ("exit") or the compensation of node ``of`` ("undo")."""

    kind: str
    node: NodeDecl
    of: str | None = None


# the parameter a handler receives the run's end in, by kind
INJECTED = {"failure": "failure", "exit": "outcome"}
AFTER_NAMES = {"failure": "on_failure", "exit": "on_exit", "undo": "compensate"}


@dataclass(frozen=True)
class Declarations:
    """A whole graph: its parts in declaration order, its edges, and the steps that
    follow the end of its runs (handlers, compensations)."""

    parts: tuple[NodeDecl | GroupDecl, ...]
    edges: tuple[tuple[str, str], ...]
    after: tuple[AfterDecl, ...] = ()


def compile_graph(decls: Declarations) -> GraphSpec:
    nodes: dict[str, NodeDecl] = {}
    groups: dict[str, GroupTree] = {}
    policies: dict[str, dict[str, Any]] = {}
    tolerant: dict[str, str] = {}
    for part in decls.parts:
        if isinstance(part, NodeDecl):
            seen = nodes.get(part.id)
            if seen is None:
                nodes[part.id] = part
            elif seen != part:
                raise DuplicateNodeError(
                    f"duplicate node id {part.id!r}: used by {seen} and {part}; "
                    f"give one of them its own id, e.g. .bind(id='{part.id}_2')"
                )
            continue
        if part.policy:
            members = list(part.node_members)
            label = part.name or "group(" + ",".join(members) + ")"
            policy = dict(part.policy, members=members)
            if policies.get(label, policy) != policy:
                raise DuplicateNodeError(f"two groups with different policies are named {label!r}")
            policies[label] = policy
            for m in members:
                if tolerant.get(m, label) != label:
                    raise GraphDefinitionError(
                        f"node {m!r} is a member of two groups with policies: "
                        f"{tolerant[m]!r} and {label!r}"
                    )
                tolerant[m] = label
        if part.name:
            tree = list(part.trees)
            if groups.get(part.name, tree) != tree:
                raise DuplicateNodeError(f"two different groups are named {part.name!r}")
            groups[part.name] = tree
    if not nodes:
        raise GraphDefinitionError("the graph has no nodes")
    for name in groups:
        if name in nodes:
            raise DuplicateNodeError(f"group name {name!r} is also a node id; rename one")

    edge_set: set[tuple[str, str]] = set()
    for src, dst in decls.edges:
        if src == dst:
            raise CycleError(f"cycle: node {src!r} runs after itself")
        edge_set.add((src, dst))
    edges = sorted(edge_set)
    succs: dict[str, list[str]] = {n: [] for n in nodes}
    preds: dict[str, list[str]] = {n: [] for n in nodes}
    for s, d in edges:
        succs[s].append(d)
        preds[d].append(s)
    order = _topological_order(nodes, preds, succs)
    is_upstream = _ancestry(preds)

    out_nodes: dict[str, Any] = {}
    for nid in order:
        out_nodes[nid] = _node_entry(nodes[nid], nodes, groups, preds, is_upstream)
        if nid in tolerant:
            out_nodes[nid]["tolerant"] = tolerant[nid]
    data: dict[str, Any] = {
        "v": SPEC_VERSION,
        "nodes": out_nodes,
        "edges": [list(e) for e in edges],
        "order": order,
    }
    if policies:
        data["policies"] = policies
    if decls.after:
        data["after"] = _after_steps(decls.after, nodes, out_nodes)
    try:
        blob = canonical(data)
    except (TypeError, ValueError) as exc:
        raise _unencodable(nodes) from exc
    # read back, so the spec holds exactly what every worker will load
    return GraphSpec.from_blob(blob, sha256(blob))


def _after_steps(
    after: tuple[AfterDecl, ...], nodes: dict[str, NodeDecl], out_nodes: dict[str, Any]
) -> dict[str, Any]:
    """The steps that follow the end of a run, added to ``out_nodes`` (outside the graph's
    order and edges); what the spec records of them."""
    out: dict[str, Any] = {"failure": "", "exit": "", "undo": []}
    seen: dict[str, AfterDecl] = {}
    for decl in after:
        what = AFTER_NAMES[decl.kind]
        if decl.kind == "undo":
            assert decl.of is not None
            step = f"{decl.of}.undo"
            key = f"undo:{decl.of}"
        else:
            step = decl.node.id
            key = decl.kind
        earlier = seen.get(key)
        if earlier is not None:
            if earlier == decl:
                continue
            target = f"node {decl.of!r}" if decl.of else "the flow"
            raise GraphDefinitionError(
                f"{target} has two different {what} handlers ({earlier.node} and "
                f"{decl.node}); give it one"
            )
        seen[key] = decl
        if step in nodes or step in out_nodes:
            raise DuplicateNodeError(
                f"{what} step {step!r} ({decl.node}) has the id of another node; give the "
                f"handler its own id, e.g. .bind(id='{decl.node.id}_handler')"
            )
        out_nodes[step] = _after_entry(decl, step)
        if decl.kind == "undo":
            out["undo"].append([decl.of, step])
        else:
            out[decl.kind] = step
    return out


def _after_entry(decl: AfterDecl, step: str) -> dict[str, Any]:
    """The node entry of a handler or compensation: it reads the run's failure or outcome
    (``failure``, ``outcome``) or the compensated node's result (under the node's id),
    besides bound values, defaults and run inputs."""
    node = decl.node
    if node.map_over is not None:
        raise GraphDefinitionError(f"{AFTER_NAMES[decl.kind]} step {step!r} cannot be a map()")
    bound = {k: v for k, v in node.bound if not isinstance(v, ResultOf)}
    if len(bound) != len(node.bound):
        raise GraphDefinitionError(
            f"{AFTER_NAMES[decl.kind]} step {step!r}: result_of() is for nodes of the graph; "
            "a handler reads the run's end, a compensation its node's result"
        )
    pull: dict[str, str] = {}
    needs: list[str] = []
    names: list[str] = []
    inject = None
    params = list(node.params)[1:] if node.context else list(node.params)
    for p in params:
        if p.variadic:
            continue
        if p.name == INJECTED.get(decl.kind):
            inject = p.name
            continue
        names.append(p.name)
        if decl.kind == "undo" and p.name == decl.of:
            pull[p.name] = p.name
        elif p.name not in bound and not p.has_default:
            needs.append(p.name)
    if decl.kind == "undo" and not pull:
        raise MissingParameterError(
            f"compensation {step!r} ({node.task}) needs a parameter named {decl.of!r}: it "
            f"receives the result of node {decl.of!r} under that name"
        )
    entry: dict[str, Any] = {
        "task": node.task,
        "kwargs": bound,
        "params": names,
        "pull": pull,
        "groups": {},
        "needs": needs,
        "opts": dict(node.options),
        "after": decl.kind,
    }
    if decl.of:
        entry["undoes"] = decl.of
    if inject:
        entry["inject"] = inject
    if node.context:
        entry["ctx"] = True
    if node.call:
        entry["call"] = node.call
    if node.retries:
        entry["retry"] = list(node.retries)
    return entry


def _unencodable(nodes: dict[str, NodeDecl]) -> SerializationError:
    """The error naming the first bound argument JSON cannot encode."""
    for node in nodes.values():
        for name, value in node.bound:
            if not isinstance(value, ResultOf) and not is_json(value):
                return SerializationError(
                    f"node {node.id!r}: bound argument {name!r} of type "
                    f"{type(value).__name__} cannot be encoded as JSON"
                )
    return SerializationError("the graph cannot be encoded as JSON")


def _ancestry(preds: dict[str, list[str]]) -> Callable[[str, str], bool]:
    """``is_upstream(candidate, node)``: is there a path from candidate to node?"""
    cache: dict[str, frozenset[str]] = {}

    def is_upstream(candidate: str, node_id: str) -> bool:
        anc = cache.get(node_id)
        if anc is None:
            seen: set[str] = set()
            stack = list(preds[node_id])
            while stack:
                cur = stack.pop()
                if cur not in seen:
                    seen.add(cur)
                    stack.extend(preds[cur])
            anc = cache[node_id] = frozenset(seen)
        return candidate in anc

    return is_upstream


def _node_entry(
    node: NodeDecl,
    nodes: dict[str, NodeDecl],
    groups: dict[str, GroupTree],
    preds: dict[str, list[str]],
    is_upstream: Callable[[str, str], bool],
) -> dict[str, Any]:
    bound = {k: v for k, v in node.bound if not isinstance(v, ResultOf)}
    pull: dict[str, str] = {}
    group_pull: dict[str, GroupTree] = {}
    needs: list[str] = []
    names: list[str] = []
    mapped: dict[str, Any] | None = None
    explicit = _results_of(node, nodes, groups, is_upstream)
    if node.map_over is not None:
        source, map_param = node.map_over
        if source not in nodes or not is_upstream(source, node.id):
            raise GraphDefinitionError(
                f"node {node.id!r}: map({source!r}) needs {source!r} to be an upstream node "
                f"(write {source} >> ... >> {node.id})"
            )
        if map_param is None:
            map_param = (
                source if any(p.name == source for p in node.params) else _only_open_param(node)
            )
        mapped = {"source": source, "param": map_param}
        if node.map_chunk:
            mapped["chunk"] = node.map_chunk
    params = list(node.params)
    if node.context:
        if not params or params[0].kind not in ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD"):
            raise GraphDefinitionError(
                f"node {node.id!r}: inject_context=True needs a first positional parameter "
                "to receive the run context"
            )
        params = params[1:]
    for p in params:
        name = p.name
        if p.variadic:
            continue
        names.append(name)
        if mapped is not None and name == mapped["param"]:
            if name in explicit:
                raise GraphDefinitionError(
                    f"node {node.id!r}: parameter {name!r} receives the items of "
                    f"map({mapped['source']!r}), so it cannot also be bound to "
                    f"{ResultOf(explicit[name])!r}"
                )
            continue
        if name in explicit:  # an explicit result_of takes the place of the name rule
            continue
        if name in nodes and preds[node.id] and is_upstream(name, node.id):
            pull[name] = name
            continue
        if name in groups and preds[node.id]:
            members = list(tree_ids(groups[name]))
            if all(is_upstream(m, node.id) for m in members):
                group_pull[name] = groups[name]
                continue
        if name in bound or p.has_default:
            continue
        if p.kind == "POSITIONAL_ONLY":
            raise MissingParameterError(
                f"node {node.id!r}: parameter {name!r} is positional-only; celery-graph "
                "passes arguments by name"
            )
        if name in nodes or name in groups:
            raise MissingParameterError(
                f"node {node.id!r}: parameter {name!r} names {'node' if name in nodes else 'group'}"
                f" {name!r}, which is not upstream of {node.id!r}; add an edge "
                f"({name} >> {node.id}) or bind a value"
            )
        needs.append(name)
    for name, source in explicit.items():  # params and, for **kwargs, any other name
        if source in groups:
            group_pull[name] = groups[source]
        else:
            pull[name] = source
    entry: dict[str, Any] = {
        "task": node.task,
        "kwargs": bound,
        "params": names,
        "pull": pull,
        "groups": group_pull,
        "needs": needs,
        "opts": dict(node.options),
    }
    if node.delay:
        entry["delay"] = node.delay
    if node.context:
        entry["ctx"] = True
    if mapped is not None:
        entry["map"] = mapped
    if node.call:
        entry["call"] = node.call
    if node.retries:
        entry["retry"] = list(node.retries)
    if node.wait is not None:
        entry["wait"] = {"timeout": node.wait.timeout}
    return entry


def _results_of(
    node: NodeDecl,
    nodes: dict[str, NodeDecl],
    groups: dict[str, GroupTree],
    is_upstream: Callable[[str, str], bool],
) -> dict[str, str]:
    """{parameter: source} for the node's bound ``result_of`` values, each checked to
    name a node or named group upstream of the node."""
    explicit: dict[str, str] = {}
    for name, value in node.bound:
        if not isinstance(value, ResultOf):
            continue
        source = value.source
        where = f"node {node.id!r}: parameter {name!r} is bound to {value!r}"
        if source == node.id:
            raise GraphDefinitionError(f"{where}, its own result; name an upstream node")
        if source in nodes:
            upstream = is_upstream(source, node.id)
        elif source in groups:
            upstream = all(is_upstream(m, node.id) for m in tree_ids(groups[source]))
        else:
            raise GraphDefinitionError(
                f"{where}, but the graph has no node or named group {source!r}; add "
                f"{source!r} upstream of {node.id!r} ({source} >> {node.id})"
            )
        if not upstream:
            kind = "node" if source in nodes else "group"
            raise GraphDefinitionError(
                f"{where}, but {kind} {source!r} is not upstream of {node.id!r}; add an "
                f"edge ({source} >> {node.id})"
            )
        explicit[name] = source
    return explicit


def _only_open_param(node: NodeDecl) -> str:
    bound = dict(node.bound)
    open_params = [
        p.name for p in node.params if not p.variadic and not p.has_default and p.name not in bound
    ]
    if node.context:
        open_params = open_params[1:]
    if len(open_params) != 1:
        raise GraphDefinitionError(
            f"node {node.id!r}: map() cannot tell which parameter receives the item "
            f"(candidates: {open_params or 'none'}); pass map(..., param='name')"
        )
    return open_params[0]


def _topological_order(
    nodes: dict[str, NodeDecl], preds: dict[str, list[str]], succs: dict[str, list[str]]
) -> list[str]:
    indegree = {n: len(preds[n]) for n in nodes}
    queue = deque(n for n in nodes if indegree[n] == 0)
    order: list[str] = []
    while queue:
        n = queue.popleft()
        order.append(n)
        for s in succs[n]:
            indegree[s] -= 1
            if indegree[s] == 0:
                queue.append(s)
    if len(order) != len(nodes):
        stuck = sorted(n for n, d in indegree.items() if d > 0)
        raise CycleError(
            "cycle in the graph among nodes: " + ", ".join(repr(n) for n in stuck[:10])
        )
    return order
