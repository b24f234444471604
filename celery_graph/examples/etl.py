"""ETL: ``extract >> (transform | audit) >> load``.

transform and audit run in parallel on the rows extract returned; load is a join and runs
once, after both::

    export CELERY_GRAPH_REDIS_URL=redis://localhost:6379/0
    graph-worker -A celery_graph.examples.etl -l INFO                        # one terminal
    celery-graph run celery_graph.examples.etl:flow --input n=5 --wait       # another
"""

from __future__ import annotations

import os

from celery import Celery

from celery_graph import task  # the public API, as in a user's module

app = Celery(
    "celery_graph.examples.etl",
    broker=os.environ.get("CELERY_GRAPH_REDIS_URL", "redis://localhost:6379/0"),
)


@task
def extract(n: int = 3) -> list[int]:
    """Pretend to read n rows from a source."""
    return list(range(1, n + 1))


@task
def transform(extract: list[int], factor: int = 10) -> list[int]:
    return [x * factor for x in extract]


@task
def audit(extract: list[int]) -> int:
    return len(extract)


@task
def load(transform: list[int], audit: int) -> dict[str, object]:
    return {"rows": transform, "count": audit}


flow = extract >> (transform | audit) >> load
