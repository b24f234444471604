"""Drawings of a GraphSpec: a terminal tree, Mermaid, Graphviz DOT and a PNG picture.

Each drawing optionally takes ``states`` ({node id: state}, from ``GraphRun.status()``),
shown as a mark in text and as a fill colour in Mermaid, DOT and PNG. The PNG uses
matplotlib (``pip install celery-graph[render]``) with a layered layout computed here:
a node's layer is the length of the longest path from a root to it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from typing import Any

from .model import GraphSpec

# Fill colours per node state (also the legend of the PNG).
STATE_COLOURS: dict[str, str] = {
    "pending": "#d0d0d0",
    "queued": "#90caf9",
    "running": "#ffd54f",
    "succeeded": "#66bb6a",
    "failed": "#ef5350",
    "skipped": "#ce93d8",  # a branch not taken (engines with conditional branches)
}
NO_STATE_COLOUR = "#e3f2fd"
STATE_MARKS = {
    "pending": "·",
    "queued": "…",
    "running": "▶",
    "succeeded": "✓",
    "failed": "✗",
    "skipped": "⊘",
}
_ANSI = {
    "succeeded": "32",
    "failed": "31",
    "running": "33",
    "queued": "36",
    "pending": "2",
    "skipped": "35",
}


Slot = tuple[str, str, int]  # a bend point of a long edge: (source, target, layer)


def layout(spec: GraphSpec) -> tuple[list[list[str | Slot]], dict[tuple[str, str], list[Slot]]]:
    """Layers of nodes plus, for every edge that skips layers, one bend point ("slot") in
    each layer it crosses, so it is drawn around the boxes, not through them.

    A node's layer is the length of the longest path from a root to it; within a layer,
    entries are ordered by the mean position of what feeds them (fewer crossings)."""
    depth: dict[str, int] = {}
    for nid in spec.order:  # topological: every predecessor comes first
        depth[nid] = 1 + max((depth[p] for p in spec.nodes[nid].preds), default=-1)
    rows: list[list[str | Slot]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    feeds: dict[str | Slot, list[str | Slot]] = {}
    bends: dict[tuple[str, str], list[Slot]] = {}
    for nid in spec.order:
        rows[depth[nid]].append(nid)
        feeds.setdefault(nid, [])
        for succ in spec.nodes[nid].succs:
            prev: str | Slot = nid
            chain: list[Slot] = []
            for layer in range(depth[nid] + 1, depth[succ]):
                slot = (nid, succ, layer)
                rows[layer].append(slot)
                feeds[slot] = [prev]
                chain.append(slot)
                prev = slot
            bends[(nid, succ)] = chain
            feeds.setdefault(succ, []).append(prev)
    position: dict[str | Slot, float] = {}
    for row in rows:
        if position:

            def key(entry: str | Slot) -> float:
                src = feeds[entry]
                return sum(position[p] for p in src) / len(src) if src else 0.0

            row.sort(key=key)  # stable: ties keep topological order
        for i, entry in enumerate(row):
            position[entry] = i - (len(row) - 1) / 2
    return rows, bends


# -- terminal -------------------------------------------------------------------------


def text(
    spec: GraphSpec,
    states: Mapping[str, str] | None = None,
    *,
    colour: bool = False,
    title: str | None = None,
) -> str:
    """A tree drawn from the roots down. A node reached a second time (a join) is shown
    as ``name ↑`` instead of being drawn again; joins list what they wait for."""
    lines: list[str] = []
    header = title or f"graph {spec.graph_id[:12]}"
    lines.append(
        f"{header}: {len(spec.nodes)} nodes, {len(spec.roots)} root(s), "
        f"{len(spec.joins)} join(s), {len(spec.sinks)} sink(s)"
    )
    seen: set[str] = set()

    def label(nid: str) -> str:
        node = spec.nodes[nid]
        out = nid
        if states is not None:
            state = states.get(nid, "pending")
            mark = f"{STATE_MARKS.get(state, '?')} {nid} [{state}]"
            out = f"\x1b[{_ANSI.get(state, '0')}m{mark}\x1b[0m" if colour else mark
        extra = []
        if node.options.get("queue"):
            extra.append(f"queue={node.options['queue']}")
        if node.is_join:
            extra.append("join of " + ", ".join(node.preds))
        return out + (f"  ({'; '.join(extra)})" if extra else "")

    def walk(nid: str, prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└─▶ " if last else "├─▶ ")
        if nid in seen:
            lines.append(f"{prefix}{branch}{nid} ↑")
            return
        seen.add(nid)
        lines.append(f"{prefix}{branch}{label(nid)}")
        succs = spec.nodes[nid].succs
        child_prefix = prefix if top else prefix + ("    " if last else "│   ")
        for i, s in enumerate(succs):
            walk(s, child_prefix, i == len(succs) - 1, False)

    for root in spec.roots:
        walk(root, "", True, True)
    return "\n".join(lines) + "\n"


# -- Mermaid and DOT ------------------------------------------------------------------


def _safe(nid: str) -> str:
    # Mermaid ids may not contain '.' or '-'; node ids may.
    return "n_" + "".join(c if c.isalnum() or c == "_" else f"_{ord(c):x}_" for c in nid)


def mermaid(spec: GraphSpec, states: Mapping[str, str] | None = None) -> str:
    """A Mermaid ``flowchart``; with states, one ``classDef`` per state."""
    out = ["flowchart TD"]
    for nid in spec.order:
        caption = nid if states is None else f"{nid}<br/>{states.get(nid, 'pending')}"
        shape = ('{{"', '"}}') if spec.nodes[nid].is_join else ('["', '"]')
        out.append(f"    {_safe(nid)}{shape[0]}{caption}{shape[1]}")
    for nid in spec.order:
        for succ in spec.nodes[nid].succs:
            out.append(f"    {_safe(nid)} --> {_safe(succ)}")
    if states is not None:
        used = sorted({states.get(n, "pending") for n in spec.nodes})
        for state in used:
            fill = STATE_COLOURS.get(state, NO_STATE_COLOUR)
            out.append(f"    classDef {state} fill:{fill},stroke:#333")
            members = ",".join(_safe(n) for n in spec.order if states.get(n, "pending") == state)
            out.append(f"    class {members} {state}")
    return "\n".join(out) + "\n"


def _dot_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dot(spec: GraphSpec, states: Mapping[str, str] | None = None) -> str:
    """A Graphviz ``digraph``; with states, nodes are filled with the state colour."""
    out = [
        f"digraph {_dot_quote('graph ' + spec.graph_id[:12])} {{",
        "    rankdir=TB;",
        '    node [shape=box, style="rounded,filled", fontname="Helvetica", '
        f'fillcolor="{NO_STATE_COLOUR}"];',
    ]
    for nid in spec.order:
        attrs = [f"label={_dot_quote(nid)}"]
        if states is not None:
            state = states.get(nid, "pending")
            attrs = [
                f"label={_dot_quote(nid + chr(10) + state)}",
                f'fillcolor="{STATE_COLOURS.get(state, NO_STATE_COLOUR)}"',
            ]
        if spec.nodes[nid].is_join:
            attrs.append("peripheries=2")
        out.append(f"    {_dot_quote(nid)} [{', '.join(attrs)}];")
    for nid in spec.order:
        for succ in spec.nodes[nid].succs:
            out.append(f"    {_dot_quote(nid)} -> {_dot_quote(succ)};")
    out.append("}")
    return "\n".join(out) + "\n"


# -- PNG ------------------------------------------------------------------------------


def png(
    spec: GraphSpec,
    path: str | os.PathLike[str],
    states: Mapping[str, str] | None = None,
    *,
    title: str | None = None,
) -> None:
    """Write a PNG picture of the graph to ``path``, nodes filled by state."""
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeError(
            "drawing a PNG needs matplotlib: pip install 'celery-graph[render]'"
        ) from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch

    rows, bends = layout(spec)
    widest = max((len(r) for r in rows), default=1)
    longest = max((len(n) for n in spec.nodes), default=4)
    box_w = max(1.6, 0.13 * longest + 0.5)
    box_h = 0.7
    gap_x, gap_y = box_w + 0.6, 1.5
    pos: dict[str, tuple[float, float]] = {}
    bend_at: dict[Slot, tuple[float, float]] = {}
    for depth, row in enumerate(rows):
        for i, entry in enumerate(row):
            xy = ((i - (len(row) - 1) / 2) * gap_x, -depth * gap_y)
            if isinstance(entry, str):
                pos[entry] = xy
            else:
                bend_at[entry] = xy

    fig_w = max(4.0, widest * gap_x + 1.0)
    fig_h = max(3.0, len(rows) * gap_y + 1.2)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h), dpi=100)
    edge_style: dict[str, Any] = {"color": "#455a64", "lw": 1.3}
    try:
        for (src, dst), chain in bends.items():
            x, y = pos[src]
            points = [(x, y - box_h / 2)]
            for slot in chain:  # pass each crossed layer at the box's height band
                bx, by = bend_at[slot]
                points += [(bx, by + box_h / 2), (bx, by - box_h / 2)]
            sx, sy = pos[dst]
            for a, b in itertools.pairwise(points):
                ax.plot([a[0], b[0]], [a[1], b[1]], solid_capstyle="round", **edge_style)
            ax.add_patch(
                FancyArrowPatch(
                    points[-1],
                    (sx, sy + box_h / 2),
                    arrowstyle="-|>",
                    mutation_scale=14,
                    shrinkA=0,
                    shrinkB=2,
                    **edge_style,
                )
            )
        for nid, (x, y) in pos.items():
            state = states.get(nid, "pending") if states is not None else None
            fill = STATE_COLOURS.get(state, NO_STATE_COLOUR) if state else NO_STATE_COLOUR
            ax.add_patch(
                FancyBboxPatch(
                    (x - box_w / 2, y - box_h / 2),
                    box_w,
                    box_h,
                    boxstyle="round,pad=0.02,rounding_size=0.12",
                    facecolor=fill,
                    edgecolor="#263238",
                    lw=2.2 if spec.nodes[nid].is_join else 1.2,
                )
            )
            caption = nid if state is None else f"{nid}\n{state}"
            ax.text(x, y, caption, ha="center", va="center", fontsize=10, color="#111111")
        everything = [*pos.values(), *bend_at.values()]
        xs = [p[0] for p in everything] or [0.0]
        ys = [p[1] for p in everything] or [0.0]
        ax.set_xlim(min(xs) - box_w, max(xs) + box_w)
        ax.set_ylim(min(ys) - box_h * 1.5, max(ys) + box_h * 1.2)
        ax.axis("off")
        if title:
            ax.set_title(title, fontsize=10)
        if states is not None:
            shown = [s for s in STATE_COLOURS if s in set(states.values()) | {"pending"}]
            ax.legend(
                handles=[
                    Patch(facecolor=STATE_COLOURS[s], edgecolor="#263238", label=s) for s in shown
                ],
                loc="lower center",
                bbox_to_anchor=(0.5, -0.02),
                ncol=len(shown),
                fontsize=8,
                frameon=False,
            )
        fig.savefig(os.fspath(path), format="png", bbox_inches="tight", facecolor="white")
    finally:
        plt.close(fig)


def states_of(status: Any) -> dict[str, str]:
    """{node id: state} from a RunStatus."""
    return {nid: n.state for nid, n in status.nodes.items()}
