"""Tasks for examples/pipeline.toml: the graph's shape lives in the file.

Run it:
    export CELERY_GRAPH_REDIS_URL=redis://localhost:6379/0
    celery -A examples.pipeline_tasks worker -l INFO
    python -m examples.pipeline_tasks
"""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery

from celery_graph import task
from celery_graph.pipeline import load

REDIS_URL = os.environ.get("CELERY_GRAPH_REDIS_URL", "redis://localhost:6379/0")
app = Celery("examples.pipeline_tasks", broker=REDIS_URL)


@task
def extract(rows: int) -> list[int]:
    return list(range(rows))


@task
def clean(extract: list[int]) -> list[int]:
    return [x for x in extract if x % 2 == 0]


@task
def profile(extract: list[int]) -> dict:
    return {"rows": len(extract), "max": max(extract)}


@task
def publish(checks: list) -> dict:
    cleaned, stats = checks
    return {"published": cleaned, **stats}


def main() -> None:
    flow = load(Path(__file__).with_name("pipeline.toml"))
    run = flow.apply_async()
    print("run", run.id)
    print(run.get(timeout=60))


if __name__ == "__main__":
    main()
