"""Drawings of a compiled graph: layers, terminal tree, Mermaid, DOT, the SVG document
(parsed as XML) and the PNG picture (checked pixel by pixel for the state colours). No
Redis needed."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from celery_graph import workflow
from celery_graph.drawing import layout, render
from tests.tasks import audit, extract, load, t1, t2, t3, transform

ETL = (extract >> (transform | audit) >> load).compile()


def layers(spec) -> list[list[str]]:
    """Node ids grouped by layer of the drawing, top to bottom within a layer."""
    drawing = layout.layout(spec)
    rows: list[list[tuple[float, str]]] = [
        [] for _ in range(1 + max(b["layer"] for b in drawing["nodes"]))
    ]
    for box in drawing["nodes"]:
        rows[box["layer"]].append((box["y"], box["id"]))
    return [[nid for _, nid in sorted(row)] for row in rows]


def hex_rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def pixel_counts(path: Path) -> dict[str, int]:
    """{state: number of pixels in that state's fill colour}."""
    from PIL import Image

    with Image.open(path) as img:
        counts = img.convert("RGB").getcolors(maxcolors=1 << 20)
    by_colour = {rgb: n for n, rgb in counts}
    return {s: by_colour.get(hex_rgb(c), 0) for s, c in render.STATE_COLOURS.items()}


def colours_in(path: Path, min_pixels: int = 500) -> set[str]:
    """The node states whose fill colour covers at least ``min_pixels`` pixels."""
    from PIL import Image

    with Image.open(path) as img:
        counts = img.convert("RGB").getcolors(maxcolors=1 << 20)
    by_colour = {rgb: n for n, rgb in counts}
    return {
        state
        for state, colour in render.STATE_COLOURS.items()
        if by_colour.get(hex_rgb(colour), 0) >= min_pixels
    }


def test_layers_follow_longest_paths() -> None:
    assert layers(ETL)[0] == ["extract"]
    assert sorted(layers(ETL)[1]) == ["audit", "transform"]
    assert layers(ETL)[2] == ["load"]
    with workflow("skip") as wf:
        t1 >> t2 >> t3
        t1 >> t3  # a shortcut edge does not pull t3 up to layer 1
    spec = wf.compile()
    assert layers(spec) == [["t1"], ["t2"], ["t3"]]
    # The shortcut bends through layer 1 (three points), so it is drawn around t2.
    edges = {(e["source"], e["target"]): e["points"] for e in layout.layout(spec)["edges"]}
    assert len(edges[("t1", "t3")]) == 3
    assert len(edges[("t1", "t2")]) == 2


SVG = "{http://www.w3.org/2000/svg}"


def test_svg_fills_every_node_by_state_and_draws_every_edge() -> None:
    states = {"extract": "succeeded", "transform": "failed", "audit": "running"}
    root = ET.fromstring(render.svg(ETL, states, title="run x"))
    boxes = {
        g.get("data-id"): g.find(f"{SVG}rect")
        for g in root.iter(f"{SVG}g")
        if "node" in (g.get("class") or "")
    }
    assert set(boxes) == {"extract", "transform", "audit", "load"}
    fills = {nid: rect.get("fill") for nid, rect in boxes.items()}
    assert fills == {
        "extract": render.STATE_COLOURS["succeeded"],
        "transform": render.STATE_COLOURS["failed"],
        "audit": render.STATE_COLOURS["running"],
        "load": render.STATE_COLOURS["pending"],  # not in states: not started
    }
    edges = [p for p in root.iter(f"{SVG}polyline") if p.get("class") == "edge"]
    assert len(edges) == 4
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "run x" in texts and "load" in texts
    assert {"succeeded", "failed", "running", "pending"} <= set(texts)  # the legend


def test_svg_groups_a_big_fan_out_with_a_bar_of_member_states() -> None:
    members = [t1.bind(id=f"leaf{i}") for i in range(40)]
    spec = (extract >> members >> load).compile()
    states = {f"leaf{i}": ("succeeded" if i < 30 else "failed") for i in range(40)}
    root = ET.fromstring(render.svg(spec, states))
    groups = [g for g in root.iter(f"{SVG}g") if "group" in (g.get("class") or "")]
    assert len(groups) == 1
    segs = {
        r.get("data-state"): float(r.get("width"))
        for r in groups[0].iter(f"{SVG}rect")
        if r.get("class") == "seg"
    }
    assert set(segs) == {"succeeded", "failed"}
    assert segs["succeeded"] == pytest.approx(3 * segs["failed"], rel=0.01)


def test_svg_escapes_labels() -> None:
    document = render.svg(ETL, title='run "x" & <y>')
    root = ET.fromstring(document)  # well-formed
    assert 'run "x" & <y>' in [t.text for t in root.iter(f"{SVG}text")]


def test_save_picks_the_format_from_the_extension(tmp_path: Path) -> None:
    render.save(ETL, tmp_path / "g.svg")
    assert ET.parse(tmp_path / "g.svg").getroot().tag == f"{SVG}svg"
    render.save(ETL, tmp_path / "g.mmd")
    assert (tmp_path / "g.mmd").read_text().startswith("flowchart")
    render.save(ETL, tmp_path / "g.dot")
    assert (tmp_path / "g.dot").read_text().startswith("digraph")
    with pytest.raises(RuntimeError, match=r"g\.pdf.*\.svg, \.png"):
        render.save(ETL, tmp_path / "g.pdf")


def test_text_tree_shows_joins_once() -> None:
    out = render.text(ETL, title="etl")
    lines = out.splitlines()
    assert lines[0] == "etl: 4 nodes, 1 root(s), 1 join(s), 1 sink(s)"
    assert lines[1] == "extract"
    assert sum("load" in line for line in lines) == 2
    assert sum(line.endswith("load ↑") for line in lines) == 1


def test_text_with_states_and_colour() -> None:
    states = {"extract": "succeeded", "transform": "failed", "audit": "running"}
    plain = render.text(ETL, states)
    assert "✓ extract [succeeded]" in plain and "✗ transform [failed]" in plain
    assert "· load [pending]" in plain
    coloured = render.text(ETL, states, colour=True)
    assert "\x1b[31m✗ transform [failed]\x1b[0m" in coloured


def test_mermaid_and_dot() -> None:
    states = {"extract": "succeeded", "transform": "failed"}
    m = render.mermaid(ETL, states)
    assert m.startswith("flowchart TD\n")
    assert 'n_load{{"load<br/>pending"}}' in m  # a join gets the hexagon shape
    assert "classDef failed fill:#ef5350" in m and "class n_transform failed" in m
    d = render.dot(ETL, states)
    assert '"transform" [label="transform\npending"' not in d
    assert 'fillcolor="#ef5350"' in d and '"extract" -> "transform";' in d
    assert d.rstrip().endswith("}")


def test_png_has_every_node_in_its_state_colour(tmp_path: Path) -> None:
    from PIL import Image

    states = {"extract": "succeeded", "transform": "failed", "audit": "running", "load": "pending"}
    path = tmp_path / "run.png"
    render.png(ETL, path, states, title="run x")
    with Image.open(path) as img:
        assert img.format == "PNG"
        width, height = img.size
    assert width >= 600 and height >= 150  # four layers left to right, two rows
    assert colours_in(path) == {"succeeded", "failed", "running", "pending"}


def test_png_draws_one_box_per_node(tmp_path: Path) -> None:
    # Two succeeded nodes cover about twice the area of one failed node (same box size;
    # the legend swatches are tiny next to a box).
    states = {"extract": "succeeded", "audit": "succeeded", "transform": "failed"}
    path = tmp_path / "run.png"
    render.png(ETL, path, states)
    counts = pixel_counts(path)
    assert 1.7 < counts["succeeded"] / counts["failed"] < 2.3
    assert 0.7 < counts["pending"] / counts["failed"] < 1.3  # load


def test_png_without_states(tmp_path: Path) -> None:
    path = tmp_path / "flow.png"
    render.png(ETL, path)
    assert path.stat().st_size > 1000
    assert colours_in(path) == set()
