"""The drawing of a graph shared by the dashboard and `render.svg`: a layered layout, left
to right, as plain data (the browser and `render.svg` turn it into SVG).

A node's layer is the length of the longest path from a root to it; an edge that crosses
layers bends through a slot in each layer it crosses; within a layer, entries are ordered
by the mean position of their neighbours (a few sweeps down and up, fewer crossings).

A big graph (more than ``BIG`` nodes) is drawn with groups, each one box:

- a bundle: three or more parallel chains (single nodes included) that hang between the
  same predecessors and the same successors, like the members of a wide fan-out;
- the middle of a long chain (``LONG_CHAIN`` nodes or more): its first and last node stay.

The browser colours a group by its members' states and lists them in its detail.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..model import GraphSpec, NodeSpec

BIG = 30  # more nodes than this: group
MIN_BUNDLE = 3  # parallel chains that make a bundle
LONG_CHAIN = 5  # a chain this long keeps its ends and groups its middle

NODE_W, NODE_H, GROUP_H = 168.0, 40.0, 52.0
GAP_X, GAP_Y, SLOT_H = 72.0, 18.0, 8.0
MARGIN = 16.0
SWEEPS = 4


@dataclass
class _Unit:
    id: str
    members: list[str]
    kind: str  # task, join, map, group
    label: str
    preds: set[str] = field(default_factory=set)  # unit ids
    succs: set[str] = field(default_factory=set)


def natural(text: str) -> tuple[Any, ...]:
    """Sort key that puts s2 before s10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


def _chains(spec: GraphSpec) -> list[list[str]]:
    """Maximal chains: runs of nodes where each link is the only edge out of the one and
    the only edge into the next. Every node is in exactly one chain (often alone)."""
    nodes = spec.nodes

    def linked(a: str, b: str) -> bool:
        return nodes[a].succs == (b,) and nodes[b].preds == (a,)

    chains = []
    for nid in spec.order:
        preds = nodes[nid].preds
        if len(preds) == 1 and linked(preds[0], nid):
            continue  # not the head of its chain
        chain = [nid]
        while len(nodes[chain[-1]].succs) == 1 and linked(chain[-1], nodes[chain[-1]].succs[0]):
            chain.append(nodes[chain[-1]].succs[0])
        chains.append(chain)
    return chains


def _node_kind(spec: GraphSpec, nid: str) -> str:
    node = spec.nodes[nid]
    if node.map_source:
        return "map"
    return "join" if node.is_join else "task"


def _units(spec: GraphSpec, group: bool) -> tuple[list[_Unit], dict[str, str]]:
    """The boxes to draw and, for every node, the id of the box it is in."""
    units: list[_Unit] = []
    unit_of: dict[str, str] = {}

    def single(nid: str) -> None:
        units.append(_Unit(nid, [nid], _node_kind(spec, nid), nid))
        unit_of[nid] = nid

    def grouped(members: list[str], label: str) -> None:
        gid = f"group:{members[0]}"
        units.append(_Unit(gid, members, "group", label))
        for m in members:
            unit_of[m] = gid

    if not group:
        for nid in spec.order:
            single(nid)
        return units, unit_of
    chains = _chains(spec)
    bundles: dict[tuple[Any, ...], list[list[str]]] = {}
    for chain in chains:
        key = (
            tuple(sorted(spec.nodes[chain[0]].preds)),
            tuple(sorted(spec.nodes[chain[-1]].succs)),
            len(chain),
        )
        bundles.setdefault(key, []).append(chain)
    done: set[str] = set()
    for chain in chains:
        if chain[0] in done:
            continue
        key = (
            tuple(sorted(spec.nodes[chain[0]].preds)),
            tuple(sorted(spec.nodes[chain[-1]].succs)),
            len(chain),
        )
        bundle = sorted(bundles[key], key=lambda c: natural(c[0]))
        if len(bundle) >= MIN_BUNDLE:
            members = [n for c in bundle for n in c]
            done.update(c[0] for c in bundle)
            what = "nodes" if len(chain) == 1 else f"chains of {len(chain)}"
            grouped(members, f"{len(bundle)} {what}: {bundle[0][0]} … {bundle[-1][0]}")
        elif len(chain) >= LONG_CHAIN:
            done.add(chain[0])
            single(chain[0])
            middle = chain[1:-1]
            grouped(middle, f"{len(middle)} steps: {middle[0]} … {middle[-1]}")
            single(chain[-1])
        else:
            done.add(chain[0])
            for nid in chain:
                single(nid)
    return units, unit_of


def _topological(units: list[_Unit], by_id: dict[str, _Unit]) -> list[_Unit]:
    """The units with every one after its predecessors (Kahn; ties keep their order)."""
    rank = {u.id: i for i, u in enumerate(units)}
    waiting = {u.id: len(u.preds) for u in units}
    ready = deque(u.id for u in units if not u.preds)
    out: list[_Unit] = []
    while ready:
        uid = ready.popleft()
        out.append(by_id[uid])
        for succ in sorted(by_id[uid].succs, key=rank.__getitem__):
            waiting[succ] -= 1
            if not waiting[succ]:
                ready.append(succ)
    return out


def _order_layers(
    layers: list[list[str]], up: dict[str, list[str]], down: dict[str, list[str]]
) -> None:
    """Barycentre sweeps: each entry moves to the mean position of its neighbours in the
    layer just ordered (stable sort, so ties keep their order)."""
    pos = {e: float(i) for layer in layers for i, e in enumerate(layer)}

    def sweep(seq: Iterable[int], neighbours: dict[str, list[str]]) -> None:
        for li in seq:
            layer = layers[li]

            def key(e: str) -> float:
                ns = neighbours.get(e) or []
                return sum(pos[n] for n in ns) / len(ns) if ns else pos[e]

            layer.sort(key=key)
            for i, e in enumerate(layer):
                pos[e] = float(i)

    for _ in range(SWEEPS):
        sweep(range(1, len(layers)), up)
        sweep(range(len(layers) - 2, -1, -1), down)
    sweep(range(1, len(layers)), up)


def layout(spec: GraphSpec, *, group: bool | None = None) -> dict[str, Any]:
    """The drawing of ``spec``: boxes with positions, edges with their points."""
    group = len(spec.nodes) > BIG if group is None else group
    units, unit_of = _units(spec, group)
    by_id = {u.id: u for u in units}
    for nid, node in spec.nodes.items():
        for succ in node.succs:
            a, b = unit_of[nid], unit_of[succ]
            if a != b:
                by_id[a].succs.add(b)
                by_id[b].preds.add(a)
    units = _topological(units, by_id)
    depth: dict[str, int] = {}
    for u in units:
        depth[u.id] = 1 + max((depth[p] for p in u.preds), default=-1)
    layers: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    up: dict[str, list[str]] = {}
    down: dict[str, list[str]] = {}
    routes: dict[tuple[str, str], list[str]] = {}
    for u in units:
        layers[depth[u.id]].append(u.id)
    for u in units:
        for succ in sorted(u.succs, key=lambda s: depth[s]):
            prev = u.id
            route = []
            for layer in range(depth[u.id] + 1, depth[succ]):
                slot = f"slot:{u.id}>{succ}@{layer}"
                layers[layer].append(slot)
                up.setdefault(slot, []).append(prev)
                down.setdefault(prev, []).append(slot)
                route.append(slot)
                prev = slot
            up.setdefault(succ, []).append(prev)
            down.setdefault(prev, []).append(succ)
            routes[(u.id, succ)] = route
    _order_layers(layers, up, down)

    def height(entry: str) -> float:
        if entry.startswith("slot:"):
            return SLOT_H
        return GROUP_H if by_id[entry].kind == "group" else NODE_H

    sizes = [sum(height(e) for e in layer) + GAP_Y * max(0, len(layer) - 1) for layer in layers]
    tallest = max(sizes, default=0.0)
    centre: dict[str, tuple[float, float]] = {}
    for li, entries in enumerate(layers):
        x = MARGIN + li * (NODE_W + GAP_X)
        y = MARGIN + (tallest - sizes[li]) / 2
        for entry in entries:
            h = height(entry)
            centre[entry] = (x + NODE_W / 2, y + h / 2)
            y += h + GAP_Y
    boxes = []
    for u in units:
        cx, cy = centre[u.id]
        h = height(u.id)
        spec_node: NodeSpec | None = spec.nodes.get(u.id)
        boxes.append(
            {
                "id": u.id,
                "label": u.label,
                "kind": u.kind,
                "members": u.members,
                "x": cx - NODE_W / 2,
                "y": cy - h / 2,
                "w": NODE_W,
                "h": h,
                "layer": depth[u.id],
                "task": spec_node.task if spec_node else None,
                "map_source": spec_node.map_source if spec_node else None,
                "preds": list(spec_node.preds) if spec_node else [],
                "queue": spec_node.options.get("queue") if spec_node else None,
            }
        )
    edges = []
    for (a, b), route in routes.items():
        ax, ay = centre[a]
        bx, by_ = centre[b]
        points = [[ax + NODE_W / 2, ay]]
        points += [[centre[s][0], centre[s][1]] for s in route]
        points.append([bx - NODE_W / 2, by_])
        edges.append({"source": a, "target": b, "points": points})
    width = MARGIN * 2 + len(layers) * NODE_W + max(0, len(layers) - 1) * GAP_X
    return {
        "graph_id": spec.graph_id,
        "nodes": boxes,
        "edges": edges,
        "unit_of": unit_of,
        "width": width,
        "height": MARGIN * 2 + tallest,
        "grouped": group,
        "node_count": len(spec.nodes),
    }
