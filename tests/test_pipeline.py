"""Pipeline files: a graph from TOML; malformed files name the line and field."""

from __future__ import annotations

import textwrap

import pytest

from celery_graph.pipeline import PipelineError, load
from tests.tasks import trace_client

ETL = """\
name = "etl"

[flow]
sequence = ["extract", { parallel = ["transform", "audit"] }, "load"]

[[node]]
id = "extract"
task = "tests.tasks.extract"
args = { n = 4 }

[[node]]
id = "transform"
task = "tests.tasks.transform"
args = { factor = 2 }
queue = "{queue}"

[[node]]
id = "audit"
task = "tests.tasks.audit"

[[node]]
id = "load"
task = "tests.tasks.load"
"""


def write(tmp_path, text: str):
    path = tmp_path / "pipeline.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_nested_blocks_pipeline_runs(app, tmp_path):
    flow = load(write(tmp_path, ETL.replace("{queue}", app.conf.task_default_queue)))
    assert flow.apply_async().get(timeout=20) == {"rows": [2, 4, 6, 8], "count": 4}
    spec = flow.compile()
    assert spec.nodes["transform"].options == {"queue": app.conf.task_default_queue}


def test_edges_pipeline_with_existing_celery_task_and_named_group(app, tmp_path):
    path = write(
        tmp_path,
        """\
        edges = [["a", "r"], ["b", "r"]]

        [[node]]
        id = "a"
        task = "tests.tasks.source"
        args = { value = "x" }

        [[node]]
        id = "b"
        task = "tests.tasks.source"
        args = { value = "y" }

        [[node]]
        id = "r"
        task = "tests.plain.resize"
        args = { image = "img" }
        """,
    )
    assert load(path).apply_async().get(timeout=20) == "img@100x100"


def test_retries_field_retries_the_node(app, tmp_path, tag):
    path = write(
        tmp_path,
        """\
        [flow]
        sequence = ["f"]

        [[node]]
        id = "f"
        task = "tests.tasks.fails_then_ok"
        args = { fail_times = 2 }
        retries = 2
        retry_delay = 0
        """,
    )
    run = load(path).apply_async(tag=tag)
    assert run.get(timeout=20) == 3
    assert run.status().nodes["f"].attempts == 3
    assert int(trace_client().get(f"cgtest-count:{tag}:fails_then_ok")) == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[flow]\nsequence = ["a"]\n\n[[node]]\nid = "a"\ntask = "tests.tasks.nope"\n',
            r"pipeline.toml:6: task: no registered task 'tests.tasks.nope'",
        ),
        (
            '[flow]\nsequence = ["a"]\n\n[[node]]\nid = "a"\ntask = "tests.tasks.source"\n'
            'colour = "red"\n',
            r"pipeline.toml:7: colour: unknown node field",
        ),
        (
            '[flow]\nsequence = ["a", "b"]\n\n[[node]]\nid = "a"\ntask = "tests.tasks.source"\n',
            r"pipeline.toml:2: flow.sequence\[1\]: 'b' is not a declared node id",
        ),
        (
            '[flow]\nsequence = ["a"]\n\n[[node]]\nid = "a"\ntask = "tests.tasks.add"\n'
            "args = { z = 1 }\n",
            r"pipeline.toml:7: args: .*'z'",
        ),
        ('[flow\nsequence = ["a"]\n', r"pipeline.toml:1: syntax:"),
        (
            '[[node]]\nid = "a"\ntask = "tests.tasks.source"\n',
            r"pipeline.toml: flow: give exactly one of",
        ),
        (
            '[flow]\nsequence = ["a"]\n\n[[node]]\nid = "a"\ntask = "tests.tasks.source"\n'
            "retries = -1\n",
            r"pipeline.toml:7: retries: must be a whole number",
        ),
    ],
)
def test_malformed_files_name_line_and_field(app, tmp_path, text, expected):
    with pytest.raises(PipelineError, match=expected):
        load(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(PipelineError, match="cannot read the pipeline file"):
        load(tmp_path / "nope.toml")
