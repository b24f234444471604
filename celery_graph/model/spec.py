"""GraphSpec: a compiled graph, as every process reads it.

The spec is canonical JSON (sorted keys, no spaces); the graph id is the sha256 of those
bytes, so the same graph always gets the same id and is stored once. ``compiler.py``
builds it from declarations; workers and clients rebuild it from the stored bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..codec import canonical, sha256
from ..errors import GraphDefinitionError, MissingParameterError, UnknownInputError

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
    map_chunk: int = 0  # items per message of the fan-out (0: one message per item)
    call: str | None = None  # existing Celery task run through celery_graph.call
    retries: int = 0  # retries on any error (node-level, from with_retries / pipeline files)
    retry_delay: float = 1.0
    preds: tuple[str, ...] = ()
    succs: tuple[str, ...] = ()
    # a step that follows the end of the run (handlers, compensations: spec.after):
    # "failure", "exit" or "undo"; ``undoes``: the node an "undo" step compensates;
    # ``inject``: the parameter that receives the run's failure or outcome, or None
    after: str | None = None
    undoes: str | None = None
    inject: str | None = None
    waits: bool = False  # a wait_for() node: its result is the signal's payload
    wait_timeout: float | None = None  # seconds it waits at most (None: for ever)

    def units(self, items: int) -> int:
        """Messages a map of ``items`` items sends (one per item, or per chunk)."""
        return -(-items // self.map_chunk) if self.map_chunk else items

    def unit_field(self, unit: int) -> str:
        """The field of a map's message ``unit``: "<node>#<i>" (item i) or "<node>@<j>"
        (chunk j); an item's result is always stored under "<node>#<i>"."""
        return f"{self.id}{'@' if self.map_chunk else '#'}{unit}"

    @property
    def is_join(self) -> bool:
        return len(self.preds) >= 2

    def pull_ids(self) -> list[str]:
        """The upstream nodes whose results fill this node's parameters, in a stable order."""
        ids = list(self.pull.values())
        for tree in self.groups.values():
            ids.extend(tree_ids(tree))
        return list(dict.fromkeys(ids))

    def upstream_ids(self) -> list[str]:
        """Every node whose result this node reads (a map node also reads its source)."""
        ids = self.pull_ids()
        if self.map_source and self.map_source not in ids:
            ids.append(self.map_source)
        return ids


@dataclass(frozen=True)
class GraphSpec:
    graph_id: str
    blob: bytes  # canonical JSON
    nodes: Mapping[str, NodeSpec]
    roots: tuple[str, ...]
    sinks: tuple[str, ...]
    joins: tuple[str, ...]
    order: tuple[str, ...] = field(repr=False)  # a topological order
    maps: tuple[str, ...] = ()  # nodes with a dynamic fan-out
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)  # group -> policy
    # what follows the end of a run: {"failure": step id or "", "exit": step id or "",
    # "undo": [[node id, step id], ...]}; its steps are nodes outside the graph's order
    after: dict[str, Any] = field(default_factory=dict)

    @property
    def waits(self) -> tuple[str, ...]:
        """The ids of the graph's ``wait_for`` nodes."""
        assert isinstance(self.nodes, _Nodes)
        return tuple(n for n in self.order if "wait" in self.nodes.raw[n])

    @property
    def roles(self) -> dict[str, str]:
        """{step id: its role}: "compensates <node>", "on_failure", "on_exit"."""
        a = self.after
        if not a:
            return {}
        roles = {step: f"compensates {node}" for node, step in a.get("undo", ())}
        for kind in ("failure", "exit"):
            if a.get(kind):
                roles[a[kind]] = f"on_{kind}"
        return roles

    @property
    def steps(self) -> tuple[str, ...]:
        """The ids of the steps that may follow the end of a run: compensations, then
        the failure handler, then the exit handler."""
        a = self.after
        if not a:
            return ()
        ids = [step for _node, step in a.get("undo", ())]
        ids += [s for s in (a.get("failure"), a.get("exit")) if s]
        return tuple(ids)

    concurrency: Concurrency | None = None  # flow.with_concurrency(limit, key)

    @classmethod
    def from_blob(cls, blob: bytes, graph_id: str | None = None) -> GraphSpec:
        data = json.loads(blob)
        return cls.from_data(data, blob, graph_id or sha256(blob))

    @classmethod
    def from_data(cls, data: dict[str, Any], blob: bytes, graph_id: str) -> GraphSpec:
        raw = data["nodes"]
        preds: dict[str, list[str]] = {n: [] for n in raw}
        succs: dict[str, list[str]] = {n: [] for n in raw}
        for src, dst in data["edges"]:
            succs[src].append(dst)
            preds[dst].append(src)
        graph = [n for n, v in raw.items() if not v.get("after")]  # steps are apart
        return cls(
            graph_id=graph_id,
            blob=blob,
            nodes=_Nodes(raw, preds, succs),
            roots=tuple(n for n in graph if not preds[n]),
            sinks=tuple(n for n in graph if not succs[n]),
            joins=tuple(n for n in graph if len(preds[n]) >= 2),
            maps=tuple(n for n in graph if raw[n].get("map")),
            order=tuple(data["order"]),
            policies=data.get("policies", {}),
            after=data.get("after", {}),
            concurrency=Concurrency.from_data(data.get("concurrency")),
        )

    @classmethod
    def empty(cls, graph_id: str = "") -> GraphSpec:
        """A graph of no nodes: what a run that never started shows (it ran nothing)."""
        return cls.from_data({"nodes": {}, "edges": [], "order": []}, b"", graph_id)

    def limited(self, limit: int, key: str | None = None) -> GraphSpec:
        """This graph with a concurrency limit (``flow.with_concurrency``): a new graph id,
        since the limit is part of what every run of it obeys. ``key`` must be a run input
        some node has as a parameter."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise GraphDefinitionError(
                f"with_concurrency: limit must be a whole number of runs, 1 or more, got {limit!r}"
            )
        if key is not None:
            if not isinstance(key, str) or not key:
                raise GraphDefinitionError(
                    f"with_concurrency: key must be the name of a run input, got {key!r}"
                )
            if not any(key in n.params for n in self.nodes.values()):
                raise GraphDefinitionError(
                    f"with_concurrency: key {key!r} is not a parameter of any node, so no run "
                    "input can carry it; name one of the flow's run inputs"
                )
        data = json.loads(self.blob)
        data["concurrency"] = {"limit": limit, "key": key}
        blob = canonical(data)
        return GraphSpec.from_blob(blob, sha256(blob))

    def check_known_inputs(self, names: Iterable[str]) -> None:
        """Raise UnknownInputError for a run input that no node has as a parameter: a typo
        would otherwise be ignored and the node would run with its default."""
        unknown = set(names)
        if not unknown:
            return
        assert isinstance(self.nodes, _Nodes)
        taken: set[str] = set()
        for n in self.nodes.raw.values():
            unknown.difference_update(n["params"])
            if not unknown:
                return
            taken.update(n["params"])
        listed = ", ".join(sorted(taken)[:20]) or "none"
        raise UnknownInputError(
            f"run input(s) {', '.join(repr(u) for u in sorted(unknown))} are a parameter of "
            f"no node of the graph (its nodes' parameters: {listed})"
        )

    @property
    def needs(self) -> list[tuple[str, str]]:
        """(node id, parameter) for every parameter only a run input can fill."""
        assert isinstance(self.nodes, _Nodes)
        return [(nid, p) for nid, n in self.nodes.raw.items() for p in n["needs"]]

    def check_inputs(self, inputs: dict[str, Any]) -> None:
        """Raise MissingParameterError if a parameter nothing fills is not in ``inputs``."""
        for node_id, param in self.needs:
            if param not in inputs:
                node = self.nodes[node_id]
                raise MissingParameterError(
                    f"node {node.id!r} ({node.task}): required parameter {param!r} is "
                    "filled by nothing: no upstream node or named group of that name, no "
                    "bound value, no default; pass it as a run input "
                    f"(flow.apply_async({param}=...)) or bind it"
                )


class _Nodes(Mapping[str, NodeSpec]):
    """The nodes of a spec, each built from the stored JSON on first use: a worker that
    runs a few nodes of a 100,000-node graph builds a few NodeSpecs, not 100,000."""

    def __init__(
        self, raw: dict[str, Any], preds: dict[str, list[str]], succs: dict[str, list[str]]
    ) -> None:
        self.raw = raw
        self._preds = preds
        self._succs = succs
        self._built: dict[str, NodeSpec] = {}

    def __getitem__(self, node_id: str) -> NodeSpec:
        node = self._built.get(node_id)
        if node is None:
            n = self.raw[node_id]
            mapped = n.get("map") or {}
            retry = n.get("retry") or [0, 1.0]
            node = self._built[node_id] = NodeSpec(
                id=node_id,
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
                map_source=mapped.get("source"),
                map_param=mapped.get("param"),
                map_chunk=mapped.get("chunk", 0),
                call=n.get("call"),
                retries=retry[0],
                retry_delay=retry[1],
                preds=tuple(self._preds[node_id]),
                succs=tuple(self._succs[node_id]),
                after=n.get("after"),
                undoes=n.get("undoes"),
                inject=n.get("inject"),
                waits="wait" in n,
                wait_timeout=(n.get("wait") or {}).get("timeout"),
            )
        return node

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.raw


@dataclass(frozen=True)
class Concurrency:
    """At most ``limit`` runs of a flow at once, per distinct value of run input ``key``
    (or in all, without one)."""

    limit: int
    key: str | None = None

    @classmethod
    def from_data(cls, data: dict[str, Any] | None) -> Concurrency | None:
        if not data:
            return None
        return cls(int(data["limit"]), data.get("key"))


def tree_ids(tree: GroupTree) -> Iterable[str]:
    """The node ids in a group tree, depth first."""
    if isinstance(tree, str):
        yield tree
    else:
        for t in tree:
            yield from tree_ids(t)
