"""ETL: extract >> (transform | audit) >> load.

transform and audit run in parallel on the rows extract returned; load is a join and runs
once, after both. Run it against a Redis (broker and graph state):

    export CELERY_GRAPH_REDIS_URL=redis://localhost:6379/0
    celery -A examples.etl worker -l INFO          # in one terminal
    python -m examples.etl                         # in another
    celery-graph run examples.etl:flow --input n=5 --wait
"""

from __future__ import annotations

import os

from celery import Celery

from celery_graph import task

REDIS_URL = os.environ.get("CELERY_GRAPH_REDIS_URL", "redis://localhost:6379/0")
app = Celery("examples.etl", broker=REDIS_URL)


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
def load(transform: list[int], audit: int) -> dict:
    return {"rows": transform, "count": audit}


flow = extract >> (transform | audit) >> load


def main() -> None:
    run = flow.apply_async(n=4)
    print("run", run.id)
    print(run.get(timeout=60))


if __name__ == "__main__":
    main()
