"""ETL: extract >> (transform | audit) >> load.

transform and audit run in parallel on the rows extract returned; load is a join and runs
once, after both. The flow is `celery_graph.examples.etl`, which the package ships (so
`celery-graph run celery_graph.examples.etl:flow` works after `pip install`); this module
is its name in a checkout, with a `main` that submits one run. Run it against a Redis
(broker and graph state):

    export CELERY_GRAPH_REDIS_URL=redis://localhost:6379/0
    celery -A examples.etl worker -l INFO          # in one terminal
    python -m examples.etl                         # in another
    celery-graph run examples.etl:flow --input n=5 --wait
"""

from __future__ import annotations

from celery_graph.examples.etl import app, audit, extract, flow, load, transform

__all__ = ["app", "audit", "extract", "flow", "load", "main", "transform"]


def main() -> None:
    run = flow.apply_async(n=4)
    print("run", run.id)
    print(run.get(timeout=60))


if __name__ == "__main__":
    main()
