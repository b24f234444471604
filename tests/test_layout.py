"""The run page's drawing: layers, joins and maps, edges, and big graphs in groups."""

from __future__ import annotations

from celery_graph.drawing.layout import BIG, GAP_X, NODE_H, NODE_W, layout
from celery_graph.dsl import Parallel, workflow
from tests.tasks import audit, extract, load, merge, process, split, step, transform


def boxes(drawing) -> dict[str, dict]:
    return {b["id"]: b for b in drawing["nodes"]}


def overlap(a: dict, b: dict) -> bool:
    return not (
        a["x"] + a["w"] <= b["x"]
        or b["x"] + b["w"] <= a["x"]
        or a["y"] + a["h"] <= b["y"]
        or b["y"] + b["h"] <= a["y"]
    )


def test_layers_left_to_right_with_joins_marked_and_edges_between_box_sides():
    drawing = layout((extract >> (transform | audit) >> load).compile())
    b = boxes(drawing)
    assert {k: v["layer"] for k, v in b.items()} == {
        "extract": 0,
        "transform": 1,
        "audit": 1,
        "load": 2,
    }
    assert b["load"]["kind"] == "join" and b["extract"]["kind"] == "task"
    assert sorted(b["load"]["preds"]) == ["audit", "transform"]
    assert b["transform"]["x"] == b["audit"]["x"] == b["extract"]["x"] + NODE_W + GAP_X
    assert not overlap(b["transform"], b["audit"])
    edges = {(e["source"], e["target"]): e["points"] for e in drawing["edges"]}
    assert set(edges) == {
        ("extract", "transform"),
        ("extract", "audit"),
        ("transform", "load"),
        ("audit", "load"),
    }
    (x0, y0), (x1, y1) = edges[("extract", "audit")]
    assert (x0, y0) == (b["extract"]["x"] + NODE_W, b["extract"]["y"] + NODE_H / 2)
    assert (x1, y1) == (b["audit"]["x"], b["audit"]["y"] + NODE_H / 2)
    assert drawing["unit_of"] == {n: n for n in b}
    assert not drawing["grouped"]
    assert drawing["width"] >= max(v["x"] + v["w"] for v in b.values())
    assert drawing["height"] >= max(v["y"] + v["h"] for v in b.values())


def test_a_long_edge_bends_through_the_layers_it_crosses():
    a, b, c = (step.bind(id=n) for n in ("a", "b", "c"))
    with workflow("long-edge") as wf:
        a >> b >> c
        a >> c
    drawing = layout(wf.compile())
    edges = {(e["source"], e["target"]): e["points"] for e in drawing["edges"]}
    assert len(edges[("a", "c")]) == 3  # source, one bend in b's layer, target
    bend = edges[("a", "c")][1]
    bx = boxes(drawing)["b"]
    assert bx["x"] <= bend[0] <= bx["x"] + NODE_W
    assert not (bx["y"] <= bend[1] <= bx["y"] + bx["h"])  # it passes beside b


def test_a_map_node_is_drawn_as_a_map_over_its_source():
    drawing = layout((split >> process.map("split") >> merge).compile())
    b = boxes(drawing)
    assert b["process"]["kind"] == "map" and b["process"]["map_source"] == "split"


def test_a_wide_fan_out_becomes_one_group_and_a_long_chain_keeps_its_ends():
    members = [step.bind(id=f"s{i}") for i in range(200)]
    drawing = layout(
        (step.bind(id="start") >> Parallel(tuple(members)) >> step.bind(id="end")).compile()
    )
    b = boxes(drawing)
    assert set(b) == {"start", "group:s0", "end"}
    assert b["group:s0"]["kind"] == "group"
    assert b["group:s0"]["members"] == [f"s{i}" for i in range(200)]
    assert b["group:s0"]["label"].startswith("200 nodes")
    assert drawing["unit_of"]["s57"] == "group:s0" and drawing["grouped"]
    assert {(e["source"], e["target"]) for e in drawing["edges"]} == {
        ("start", "group:s0"),
        ("group:s0", "end"),
    }

    chain = members[0]
    for m in members[1 : BIG + 5]:
        chain = chain >> m
    b = boxes(layout(chain.compile()))
    assert set(b) == {"s0", "group:s1", f"s{BIG + 4}"}
    assert b["group:s1"]["members"] == [f"s{i}" for i in range(1, BIG + 4)]


def test_parallel_chains_between_the_same_nodes_bundle_into_one_group():
    chains = [step.bind(id=f"a{i}") >> step.bind(id=f"b{i}") for i in range(20)]
    drawing = layout(
        (step.bind(id="start") >> Parallel(tuple(chains)) >> step.bind(id="end")).compile()
    )
    b = boxes(drawing)
    assert set(b) == {"start", "group:a0", "end"}
    assert len(b["group:a0"]["members"]) == 40
    assert b["group:a0"]["label"].startswith("20 chains of 2")


def test_a_small_graph_is_never_grouped_and_no_boxes_overlap():
    members = [step.bind(id=f"m{i}") for i in range(BIG - 2)]
    drawing = layout(
        (step.bind(id="start") >> Parallel(tuple(members)) >> step.bind(id="end")).compile()
    )
    b = list(boxes(drawing).values())
    assert len(b) == BIG and not drawing["grouped"]
    assert not any(overlap(p, q) for i, p in enumerate(b) for q in b[i + 1 :])
