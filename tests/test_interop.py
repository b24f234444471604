"""Existing Celery tasks and signatures as graph nodes."""

from __future__ import annotations

import pytest

from celery_graph import GraphDefinitionError, NotAGraphTaskError, node
from tests.tasks import collect, count_chars, resize, source


def test_existing_signature_is_a_node_with_its_arguments(any_app):
    flow = node(resize.s("cat.png", width=50), id="resize") >> node(count_chars)
    run = flow.apply_async()
    assert run.get(timeout=20) == {
        "chars": len("cat.png@50x100"),
        "task": "tests.plain.count_chars",
    }
    assert run.results()["resize"] == "cat.png@50x100"


def test_existing_task_receives_upstream_results_by_parameter_name(any_app):
    # no upstream node is called "image", so the bound value fills it
    flow = source.bind(value="dog.png") >> node(resize.s(height=7), id="resize", image="x")
    assert flow.apply_async().get(timeout=20) == "x@100x7"
    image = source.bind(id="image", value="owl.png")
    assert (image >> node(resize.s(), id="resize")).apply_async().get(timeout=20) == (
        "owl.png@100x100"
    )


def test_node_errors_are_clear():
    with pytest.raises(NotAGraphTaskError, match="not registered"):
        from celery import Signature

        node(Signature("tests.plain.nope"))
    with pytest.raises(GraphDefinitionError, match=r"arguments do not fit tests\.plain\.resize"):
        node(resize.s(1, 2, 3, 4))
    with pytest.raises(NotAGraphTaskError, match="got int"):
        node(42)


def test_existing_task_node_in_a_named_group(any_app):
    group = (node(resize.s("a"), id="ra") | node(resize.s("b", width=1), id="rb")).named("batch")
    assert (group >> collect).apply_async().get(timeout=20) == ["a@100x100", "b@1x100"]
