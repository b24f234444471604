"""Compile a DSL flow into a validated, canonical GraphSpec.

The spec is canonical JSON (sorted keys, no spaces); the graph id is the sha256 of those
bytes, so the same graph always gets the same id and is stored once.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .dsl import Flow, Parallel, TaskNode, Workflow, _parameters
from .errors import (
    CycleError,
    DuplicateNodeError,
    GraphDefinitionError,
    MissingParameterError,
    SerializationError,
)

SPEC_VERSION = 1

# A group tree is a node id, or a list of group trees (a nested parallel member).
GroupTree = Any


@dataclass(frozen=True)
class NodeSpec:
    id: str
    task: str
    kwargs: dict[str, Any]
    params: tuple[str, ...]
    pull: dict[str, str]  # parameter -> upstream node id
    groups: dict[str, GroupTree]  # parameter -> tree of upstream node ids
    needs: tuple[str, ...]  # parameters only a run input can fill
    options: dict[str, Any]  # routing options for the node's messages
    tolerant: str | None = None  # policy group this node may fail in without failing the run
    delay: float = 0.0  # countdown of the node's message
    context: bool = False  # the function's first parameter receives the RunContext
    map_source: str | None = None  # dynamic fan-out over this upstream node's list result
    map_param: str | None = None  # the parameter that receives each item
    call: str | None = None  # existing Celery task run through celery_graph.call
    retries: int = 0  # retries on any error (node-level, from with_retries / pipeline files)
    retry_delay: float = 1.0
    preds: tuple[str, ...] = ()
    succs: tuple[str, ...] = ()

    @property
    def is_join(self) -> bool:
        return len(self.preds) >= 2

    def pull_ids(self) -> list[str]:
        """The upstream nodes whose results fill this node's parameters, in a stable order."""
        ids = list(self.pull.values())
        for tree in self.groups.values():
            ids.extend(_tree_ids(tree))
        return list(dict.fromkeys(ids))

    def upstream_ids(self) -> list[str]:
        """Every node whose result this node reads (a map node also reads its source)."""
        ids = self.pull_ids()
        if self.map_source and self.map_source not in ids:
            ids.append(self.map_source)
        return ids


def policy_violation(policy: dict[str, Any], failed: set[str]) -> str | None:
    """Why ``policy`` can no longer be met with ``failed`` members, or None if it can."""
    members = policy["members"]
    kind = policy["kind"]
    if kind == "at_least":
        left = len(members) - len(failed & set(members))
        if left < policy["n"]:
            return f"at most {left} of {len(members)} members can succeed, {policy['n']} must"
    elif kind == "critical":
        lost = sorted(failed & set(policy["critical"]))
        if lost:
            return f"critical member(s) {', '.join(lost)} failed"
    return None


@dataclass(frozen=True)
class GraphSpec:
    graph_id: str
    blob: bytes  # canonical JSON
    nodes: dict[str, NodeSpec]
    roots: tuple[str, ...]
    sinks: tuple[str, ...]
    joins: tuple[str, ...]
    order: tuple[str, ...] = field(repr=False)  # a topological order
    maps: tuple[str, ...] = ()  # nodes with a dynamic fan-out
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)  # group -> policy

    @classmethod
    def from_blob(cls, blob: bytes, graph_id: str | None = None) -> GraphSpec:
        data = json.loads(blob)
        return cls._build(data, blob, graph_id or sha256(blob))

    @classmethod
    def _build(cls, data: dict[str, Any], blob: bytes, graph_id: str) -> GraphSpec:
        raw = data["nodes"]
        preds: dict[str, list[str]] = {n: [] for n in raw}
        succs: dict[str, list[str]] = {n: [] for n in raw}
        for src, dst in data["edges"]:
            succs[src].append(dst)
            preds[dst].append(src)
        nodes = {
            nid: NodeSpec(
                id=nid,
                task=n["task"],
                kwargs=n["kwargs"],
                params=tuple(n["params"]),
                pull=n["pull"],
                groups=n["groups"],
                needs=tuple(n["needs"]),
                options=n["opts"],
                tolerant=n.get("tolerant"),
                delay=n.get("delay", 0.0),
                context=n.get("ctx", False),
                map_source=(n.get("map") or {}).get("source"),
                map_param=(n.get("map") or {}).get("param"),
                call=n.get("call"),
                retries=(n.get("retry") or [0, 1.0])[0],
                retry_delay=(n.get("retry") or [0, 1.0])[1],
                preds=tuple(preds[nid]),
                succs=tuple(succs[nid]),
            )
            for nid, n in raw.items()
        }
        return cls(
            graph_id=graph_id,
            blob=blob,
            nodes=nodes,
            roots=tuple(n for n in nodes if not preds[n]),
            sinks=tuple(n for n in nodes if not succs[n]),
            joins=tuple(n for n in nodes if len(preds[n]) >= 2),
            maps=tuple(n for n in nodes if nodes[n].map_source),
            order=tuple(data["order"]),
            policies=data.get("policies", {}),
        )

    def check_inputs(self, inputs: dict[str, Any]) -> None:
        """Raise MissingParameterError if a parameter nothing fills is not in ``inputs``."""
        for node in self.nodes.values():
            for param in node.needs:
                if param not in inputs:
                    raise MissingParameterError(
                        f"node {node.id!r} ({node.task}): required parameter {param!r} is "
                        "filled by nothing: no upstream node or named group of that name, no "
                        "bound value, no default; pass it as a run input "
                        f"(flow.apply_async({param}=...)) or bind it"
                    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _tree_ids(tree: GroupTree) -> Iterable[str]:
    if isinstance(tree, str):
        yield tree
    else:
        for t in tree:
            yield from _tree_ids(t)


def _member_tree(flow: Flow) -> GroupTree:
    """The result shape of a group member: a node's id, a sequence's last step, a list."""
    from .dsl import Sequence

    if isinstance(flow, TaskNode):
        return flow.id
    if isinstance(flow, Sequence):
        return _member_tree(flow.steps[-1])
    if isinstance(flow, Parallel):
        return [_member_tree(m) for m in flow.members]
    exits = flow.exits()
    return exits[0].id if len(exits) == 1 else [e.id for e in exits]


def compile_flow(flow: Flow) -> GraphSpec:
    """Validate ``flow`` and compile it; the result is cached on immutable flows."""
    cached = getattr(flow, "_compiled", None)
    if cached is not None and not isinstance(flow, Workflow):
        return cached
    spec = _compile(flow)
    if not isinstance(flow, Workflow):
        object.__setattr__(flow, "_compiled", spec)
    return spec


def _compile(flow: Flow) -> GraphSpec:
    nodes: dict[str, TaskNode] = {}
    groups: dict[str, GroupTree] = {}
    policies: dict[str, dict[str, Any]] = {}
    tolerant: dict[str, str] = {}
    for part in flow.walk():
        if isinstance(part, Parallel) and part.policy:
            members = [m.id for m in part.members if isinstance(m, TaskNode)]
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
        if isinstance(part, TaskNode):
            seen = nodes.get(part.id)
            if seen is None:
                nodes[part.id] = part
            elif seen is not part and seen.definition() != part.definition():
                raise DuplicateNodeError(
                    f"duplicate node id {part.id!r}: used by {seen!r} and {part!r}; give one "
                    f"of them its own id, e.g. .bind(id='{part.id}_2')"
                )
        elif isinstance(part, Parallel) and part.name:
            tree = [_member_tree(m) for m in part.members]
            if groups.get(part.name, tree) != tree:
                raise DuplicateNodeError(f"two different groups are named {part.name!r}")
            groups[part.name] = tree
    if not nodes:
        raise GraphDefinitionError("the graph has no nodes")
    for name in groups:
        if name in nodes:
            raise DuplicateNodeError(f"group name {name!r} is also a node id; rename one")

    edge_set: set[tuple[str, str]] = set()
    for src, dst in flow.edges():
        if src.id == dst.id:
            raise CycleError(f"cycle: node {src.id!r} runs after itself")
        edge_set.add((src.id, dst.id))
    edges = sorted(edge_set)
    succs: dict[str, list[str]] = {n: [] for n in nodes}
    preds: dict[str, list[str]] = {n: [] for n in nodes}
    for s, d in edges:
        succs[s].append(d)
        preds[d].append(s)
    order = _topological_order(nodes, preds, succs)

    ancestors_cache: dict[str, frozenset[str]] = {}

    def is_upstream(candidate: str, node_id: str) -> bool:
        anc = ancestors_cache.get(node_id)
        if anc is None:
            seen: set[str] = set()
            stack = list(preds[node_id])
            while stack:
                cur = stack.pop()
                if cur not in seen:
                    seen.add(cur)
                    stack.extend(preds[cur])
            anc = ancestors_cache[node_id] = frozenset(seen)
        return candidate in anc

    out_nodes: dict[str, Any] = {}
    for nid in order:
        node = nodes[nid]
        out_nodes[nid] = _node_entry(node, nodes, groups, preds, is_upstream)
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
    blob = canonical(data)
    return GraphSpec._build(data, blob, sha256(blob))


def _node_entry(node, nodes, groups, preds, is_upstream) -> dict[str, Any]:
    params = _parameters(node.fn)
    bound = dict(node.bound)
    pull: dict[str, str] = {}
    group_pull: dict[str, GroupTree] = {}
    needs: list[str] = []
    names: list[str] = []
    mapped: dict[str, Any] | None = None
    if node.map_over is not None:
        source, map_param = node.map_over
        if source not in nodes or not is_upstream(source, node.id):
            raise GraphDefinitionError(
                f"node {node.id!r}: map({source!r}) needs {source!r} to be an upstream node "
                f"(write {source} >> ... >> {node.id})"
            )
        if map_param is None:
            map_param = source if source in params else _only_open_param(node, params)
        mapped = {"source": source, "param": map_param}
    items = list(params.items())
    if node.context:
        if not items or items[0][1].kind not in (
            inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD
        ):
            raise GraphDefinitionError(
                f"node {node.id!r}: inject_context=True needs a first positional parameter "
                "to receive the run context"
            )
        items = items[1:]
    for name, p in items:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        names.append(name)
        if mapped is not None and name == mapped["param"]:
            continue
        if name in nodes and preds[node.id] and is_upstream(name, node.id):
            pull[name] = name
            continue
        if name in groups and preds[node.id]:
            members = list(_tree_ids(groups[name]))
            if all(is_upstream(m, node.id) for m in members):
                group_pull[name] = groups[name]
                continue
        if name in bound or p.default is not inspect.Parameter.empty:
            continue
        if p.kind is p.POSITIONAL_ONLY:
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
    try:
        kwargs_json = json.loads(canonical(bound))
    except (TypeError, ValueError) as exc:
        bad = next(
            (k for k, v in bound.items() if not _json_ok(v)), next(iter(bound), "?")
        )
        raise SerializationError(
            f"node {node.id!r}: bound argument {bad!r} of type {type(bound.get(bad)).__name__} "
            "cannot be encoded as JSON"
        ) from exc
    entry: dict[str, Any] = {
        "task": node.task_name,
        "kwargs": kwargs_json,
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
    return entry


def _only_open_param(node: Any, params: dict[str, inspect.Parameter]) -> str:
    open_params = [
        n for n, p in params.items()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and p.default is inspect.Parameter.empty and n not in dict(node.bound)
    ]
    if node.context:
        open_params = open_params[1:]
    if len(open_params) != 1:
        raise GraphDefinitionError(
            f"node {node.id!r}: map() cannot tell which parameter receives the item "
            f"(candidates: {open_params or 'none'}); pass map(..., param='name')"
        )
    return open_params[0]


def _json_ok(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _topological_order(nodes, preds, succs) -> list[str]:
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
