"""Invariant 1: a node's message holds ids and its own arguments, never the graph."""

from __future__ import annotations

import tracemalloc

from celery import Celery

from celery_graph import Parallel
from celery_graph.protocol import GRAPH_KWARG
from tests.tasks import collect, source, step


def _fan(n: int):
    members = [source.bind(id=f"m{i:04d}", value=i) for i in range(n)]  # same-length ids
    return step >> Parallel(tuple(members)).named("batch") >> collect


def _of(run, published: list[dict]) -> list[dict]:
    """The messages of ``run`` (the session's worker may still publish an earlier test's:
    one more message than the run's in a loaded CI)."""
    return [m for m in published if m["headers"]["id"].startswith(f"{run.id}:")]


def test_largest_message_of_1000_node_graph_is_no_bigger_than_3_node(eager_off, published):
    small = _fan(1)  # 3 nodes
    run = small.apply_async()
    assert run.get(timeout=20) == [0]
    small_max = max(m["size"] for m in _of(run, published))

    big = _fan(998)  # 1,000 nodes
    run = big.apply_async()
    assert run.get(timeout=90) == list(range(998))
    mine = _of(run, published)
    assert len({m["headers"]["id"] for m in mine}) == 1000  # one message per node
    big_max = max(m["size"] for m in mine)
    # values 0 vs 997 differ by 2 digits, shown twice (kwargs, kwargsrepr); nothing else grows
    assert big_max <= small_max + 4, (small_max, big_max)
    assert big_max < 2048


def test_message_carries_ids_and_own_arguments_only(eager_off, published):
    run = (source.bind(value=5) >> step.bind(name="x")).apply_async()
    run.get(timeout=20)
    published = _of(run, published)
    assert len(published) == 2
    for msg in published:
        args, kwargs, _embed = msg["body"]
        assert list(args) == []
        # "s": sent while the call that creates the run or releases the node was on its
        # way (the root, and here the lone successor of a published node)
        assert set(kwargs[GRAPH_KWARG]) == {"g", "r", "n", "s"}
        assert not msg["body"][2].get("chain") and not msg["body"][2].get("chord")
    by_node = {m["body"][1][GRAPH_KWARG]["n"]: m["body"][1] for m in published}
    assert by_node["source"]["value"] == 5
    assert by_node["step"]["name"] == "x"
    assert msg["headers"]["id"] == f"{run.id}:{msg['body'][1][GRAPH_KWARG]['n']}"


# plain keyword arguments (dispatch.shown writes their text), and others (Celery's saferepr)
SHOWN = [
    {"_graph": {"g": "a" * 64, "r": "b" * 32, "n": "s0", "s": 1}},
    {"tag": 'it\'s \\ "q"', "name": "naïve ✓\nnext", "delay": 0.25, "_graph": {"n": "x"}},
    {"tag": None, "flag": True, "off": False, "n": -3, "big": 10**30, "f": float("inf")},
    {"tag": {"a": 1, "b": "c'"}, "_graph": {}},
    {},
]
SAFEREPR = [
    {"tag": [1, 2]},  # a list
    {"tag": (1,)},
    {"tag": {"a": {"b": 1}}},  # a dict two levels down
    {"tag": b"bytes"},
    {1: "a key that is not a text"},
    {"tag": "x" * 1100},  # past the length Celery cuts at
    {"tag": "x" * 600, "name": "y" * 600},  # together
    {"tag": {"a": "x" * 1100}},
    {"tag": 10**400, "name": 10**400, "more": 10**400},  # 401 digits each (one is fine)
    {"tag": 10**5000},  # more digits than Python writes by default (str raises)
    {"tag": object()},
]


def _saferepr(app, value):
    from celery.utils.saferepr import saferepr

    levels = app.conf.get("task_repr_maxlevels", 3)  # Celery 5.5 on; saferepr's default before
    return saferepr(value, app.amqp.kwargsrepr_maxsize, maxlevels=levels)


def test_plain_arguments_are_shown_as_celerys_saferepr_writes_them(app):
    from celery_graph.dispatch import shown

    assert _saferepr(app, ()) == "()"  # the argsrepr of a node message
    for kwargs in SHOWN:
        assert shown(app, kwargs) == {"argsrepr": "()", "kwargsrepr": _saferepr(app, kwargs)}, (
            kwargs
        )
    for kwargs in SAFEREPR:
        assert shown(app, kwargs) == {}, kwargs
    one = {"tag": 10**400}
    assert shown(app, one) == {"argsrepr": "()", "kwargsrepr": _saferepr(app, one)}
    # a long text is not copied to find that it is too long
    long = {"tag": "x" * 10_000_000}
    tracemalloc.start()
    try:
        assert shown(app, long) == {}
        assert tracemalloc.get_traced_memory()[1] < 100_000
    finally:
        tracemalloc.stop()
    # a limit of one level: Celery writes "{...}" for the graph fields
    other = Celery("levels", set_as_current=False)
    other.conf.task_repr_maxlevels = 1
    assert shown(other, SHOWN[0]) == {}
    other.conf.task_repr_maxlevels = 2
    assert shown(other, SHOWN[0]) == {"argsrepr": "()", "kwargsrepr": _saferepr(app, SHOWN[0])}


def test_flower_sees_node_arguments_as_celery_writes_them(eager_off, published):
    """argsrepr and kwargsrepr (what Flower and ``celery inspect`` show) of node messages:
    Celery's saferepr of the arguments, written by dispatch.shown for plain ones."""
    flow = (
        source.bind(value=5)
        >> step.bind(id="quoted", tag='it\'s \\ "q"', name="naïve ✓\nnext")
        >> step.bind(id="nested", tag={"a": 1}, name="x")
        >> step.bind(id="listed", tag=[1, 2], name="y")
    )
    run = flow.apply_async()
    run.get(timeout=20)
    mine = _of(run, published)
    assert len(mine) == 4
    for msg in mine:
        args, kwargs, _embed = msg["body"]
        assert msg["headers"]["argsrepr"] == _saferepr(eager_off, tuple(args))
        assert msg["headers"]["kwargsrepr"] == _saferepr(eager_off, kwargs)
