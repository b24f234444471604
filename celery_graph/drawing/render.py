"""Drawings of a GraphSpec: a terminal tree, Mermaid, Graphviz DOT, SVG and PNG.

Each drawing optionally takes ``states`` ({node id: state}, from ``GraphRun.status()``),
shown as a mark in text and as a fill colour in the others. The SVG is written directly
in the dashboard's layout (`celery_graph.drawing.layout`); a PNG is that SVG converted where a
light converter is installed (CairoSVG or rsvg-convert).
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

from ..model import GraphSpec
from .layout import layout

# Fill colours per node state (also the legend of the PNG).
STATE_COLOURS: dict[str, str] = {
    "pending": "#d0d0d0",
    "queued": "#90caf9",
    "running": "#ffd54f",
    "succeeded": "#66bb6a",
    "failed": "#ef5350",
    "skipped": "#ce93d8",  # a branch not taken (engines with conditional branches)
    "upstream_failed": "#f4a9a8",  # left unfinished by a failed run: never runs
    "cancelled": "#9e9e9e",  # left unfinished by a cancelled run
}
NO_STATE_COLOUR = "#e3f2fd"
STATE_MARKS = {
    "pending": "·",
    "queued": "…",
    "running": "▶",
    "succeeded": "✓",
    "failed": "✗",
    "skipped": "⊘",
    "upstream_failed": "↯",
    "cancelled": "⊗",
}
_ANSI = {
    "succeeded": "32",
    "failed": "31",
    "running": "33",
    "queued": "36",
    "pending": "2",
    "skipped": "35",
    "upstream_failed": "31;2",
    "cancelled": "2",
}


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


# -- SVG and PNG ----------------------------------------------------------------------

_FONT = 'font-family="DejaVu Sans, Helvetica, Arial, sans-serif"'
_TITLE_H = 28.0
_LEGEND_H = 26.0


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fit(label: str, width: float, size: float = 12.0) -> str:
    """``label`` cut with an ellipsis to what fits ``width`` at about ``size`` pixels."""
    room = max(4, int(width / (size * 0.6)))
    return label if len(label) <= room else label[: room - 1] + "…"


def svg(
    spec: GraphSpec,
    states: Mapping[str, str] | None = None,
    *,
    title: str | None = None,
    group: bool | None = None,
) -> str:
    """The graph as an SVG document, left to right, in the dashboard's layout: nodes filled
    by state, joins with a thick border, maps dashed, big graphs drawn with groups (a group
    shows its members' states as a bar). Needs nothing beyond the standard library."""
    drawing = layout(spec, group=group)
    top = _TITLE_H if title else 0.0
    legend = _LEGEND_H if states is not None else 0.0
    width = max(float(drawing["width"]), 240.0)
    height = float(drawing["height"]) + top + legend
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" '
        'markerWidth="8" markerHeight="8" orient="auto">'
        '<path d="M0,0 L10,5 L0,10 z" fill="#455a64"/></marker></defs>',
        '<rect width="100%" height="100%" fill="#ffffff"/>',
    ]
    if title:
        out.append(
            f'<text x="16" y="19" {_FONT} font-size="14" fill="#1d2330">{_esc(title)}</text>'
        )
    out.append(f'<g transform="translate(0,{top:.0f})">')
    for edge in drawing["edges"]:
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in edge["points"])
        out.append(
            f'<polyline class="edge" points="{points}" fill="none" stroke="#455a64" '
            f'stroke-width="1.4" marker-end="url(#arrow)"/>'
        )
    for box in drawing["nodes"]:
        out.append(_svg_box(box, states))
    out.append("</g>")
    if states is not None:
        shown = [s for s in STATE_COLOURS if s in set(states.values()) | {"pending"}]
        x, y = 16.0, height - legend / 2
        for state in shown:
            out.append(
                f'<rect class="legend" x="{x:.0f}" y="{y - 5:.0f}" width="10" height="10" '
                f'fill="{STATE_COLOURS[state]}" stroke="#263238" stroke-width="0.8"/>'
                f'<text x="{x + 14:.0f}" y="{y + 4:.0f}" {_FONT} font-size="11" '
                f'fill="#1d2330">{state}</text>'
            )
            x += 24 + 7 * len(state)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _svg_box(box: Mapping[str, Any], states: Mapping[str, str] | None) -> str:
    x, y, w, h = box["x"], box["y"], box["w"], box["h"]
    kind = box["kind"]
    border = 'stroke-width="2.6"' if kind == "join" else 'stroke-width="1.2"'
    if kind == "map":
        border += ' stroke-dasharray="5,3"'
    parts = [f'<g class="node {kind}" data-id="{_esc(box["id"])}">']
    if kind == "group":
        members = box["members"]
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.0f}" height="{h:.0f}" rx="8" '
            f'fill="{NO_STATE_COLOUR}" stroke="#263238" {border}/>'
        )
        if states is not None and members:  # a bar of the members' states, in order
            counts: dict[str, int] = {}
            for m in members:
                s = states.get(m, "pending")
                counts[s] = counts.get(s, 0) + 1
            bx, bw = x + 8, w - 16
            for state in [*STATE_COLOURS, *sorted(set(counts) - set(STATE_COLOURS))]:
                if counts.get(state):
                    seg = bw * counts[state] / len(members)
                    fill = STATE_COLOURS.get(state, NO_STATE_COLOUR)
                    parts.append(
                        f'<rect class="seg" data-state="{_esc(state)}" x="{bx:.1f}" '
                        f'y="{y + h - 14:.1f}" width="{seg:.1f}" height="8" fill="{fill}"/>'
                    )
                    bx += seg
        label_y = y + 20
    else:
        mine = states.get(box["id"], "pending") if states is not None else None
        fill = STATE_COLOURS.get(mine, NO_STATE_COLOUR) if mine else NO_STATE_COLOUR
        data = f' data-state="{_esc(mine)}"' if mine else ""
        parts.append(
            f'<rect class="box"{data} x="{x:.1f}" y="{y:.1f}" width="{w:.0f}" '
            f'height="{h:.0f}" rx="8" fill="{fill}" stroke="#263238" {border}/>'
        )
        label_y = y + h / 2 + 4
    parts.append(
        f'<text x="{x + w / 2:.1f}" y="{label_y:.1f}" text-anchor="middle" {_FONT} '
        f'font-size="12" fill="#111111">{_esc(_fit(box["label"], w - 12))}</text>'
    )
    parts.append(f"<title>{_esc(box['label'])}</title></g>")
    return "".join(parts)


def png(
    spec: GraphSpec,
    path: str | os.PathLike[str],
    states: Mapping[str, str] | None = None,
    *,
    title: str | None = None,
) -> None:
    """Write a PNG picture of the graph to ``path``: the SVG drawing, converted by CairoSVG
    (``pip install 'celery-graph[render]'``) or by ``rsvg-convert`` when either is there."""
    document = svg(spec, states, title=title).encode()
    try:
        import cairosvg
    except (ImportError, OSError):  # OSError: the package is there, the cairo library not
        cairosvg = None
    if cairosvg is not None:
        cairosvg.svg2png(bytestring=document, write_to=os.fspath(path))
        return
    converter = shutil.which("rsvg-convert")
    if converter is None:
        raise RuntimeError(
            "writing a PNG needs a converter: pip install 'celery-graph[render]' (CairoSVG, "
            "which uses the system's cairo library) or install rsvg-convert (Debian: "
            "librsvg2-bin); an .svg file needs nothing"
        )
    done = subprocess.run(
        [converter, "--format=png", "--output", os.fspath(path)],
        input=document,
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"rsvg-convert failed: {done.stderr.decode(errors='replace')}")


def save(
    spec: GraphSpec,
    path: str | os.PathLike[str],
    states: Mapping[str, str] | None = None,
    *,
    title: str | None = None,
) -> None:
    """Write a picture of the graph, in the format ``path``'s extension names: ``.svg``
    (always), ``.png`` (with a converter, see `png`), ``.mmd`` or ``.dot``."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix == ".png":
        png(spec, path, states, title=title)
        return
    writers = {
        ".svg": lambda: svg(spec, states, title=title),
        ".mmd": lambda: mermaid(spec, states),
        ".dot": lambda: dot(spec, states),
        ".gv": lambda: dot(spec, states),
    }
    if suffix not in writers:
        raise RuntimeError(
            f"cannot tell the picture format of {os.fspath(path)!r}: "
            "name it .svg, .png, .mmd or .dot"
        )
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(writers[suffix]())


def states_of(status: Any) -> dict[str, str]:
    """{node id: state} from a RunStatus."""
    return {nid: n.state for nid, n in status.nodes.items()}
