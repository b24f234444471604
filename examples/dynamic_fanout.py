"""Dynamic fan-out and delays: one task per item of a list produced at run time.

Run it:
    export CELERY_GRAPH_REDIS_URL=redis://localhost:6379/0
    celery -A examples.dynamic_fanout worker -l INFO
    python -m examples.dynamic_fanout
"""

from __future__ import annotations

import os

from celery import Celery

from celery_graph import task

REDIS_URL = os.environ.get("CELERY_GRAPH_REDIS_URL", "redis://localhost:6379/0")
app = Celery("examples.dynamic_fanout", broker=REDIS_URL)


@task
def list_files(folder: str) -> list[str]:
    """How many items there are is known only when this runs."""
    return [f"{folder}/part-{i}.csv" for i in range(5)]


@task
def row_count(list_files: str) -> int:
    """Runs once per file: the parameter named like the source receives one item."""
    return 100 + int(list_files.rsplit("-", 1)[1].split(".")[0])


@task
def report(row_count: list[int]) -> dict:
    """Gets the list of per-file results, in file order."""
    return {"files": len(row_count), "rows": sum(row_count)}


# the report starts no earlier than 0.5 s after the last count finished
flow = list_files >> row_count.map("list_files") >> report.delay_by(0.5)


def main() -> None:
    run = flow.apply_async(folder="s3://bucket/day")
    print("run", run.id)
    print(run.get(timeout=60))


if __name__ == "__main__":
    main()
