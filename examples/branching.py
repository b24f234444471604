"""Conditional branches: a node picks which successors run; the others are skipped.

Run it:
    export CELERY_GRAPH_REDIS_URL=redis://localhost:6379/0
    celery -A examples.branching worker -l INFO
    python -m examples.branching
"""

from __future__ import annotations

import os

from celery import Celery

from celery_graph import branch, task

REDIS_URL = os.environ.get("CELERY_GRAPH_REDIS_URL", "redis://localhost:6379/0")
app = Celery("examples.branching", broker=REDIS_URL)


@task
def triage(order: dict):
    """Express orders skip the fraud check; the result stays the order."""
    return branch("express" if order["total"] < 100 else "review", value=order)


@task
def express(triage: dict) -> str:
    return f"shipped {triage['id']} today"


@task
def review(triage: dict) -> str:
    return f"{triage['id']} held for review"


@task
def notify(express: str | None, review: str | None) -> str:
    """A join: runs once, with None for the branch that was skipped."""
    return express or review or "nothing to say"


flow = triage >> (express | review) >> notify


def main() -> None:
    for order in ({"id": "A-1", "total": 40}, {"id": "B-2", "total": 900}):
        run = flow.apply_async(order=order)
        result = run.get(timeout=60)
        skipped = [n for n, s in run.status().nodes.items() if s.state == "skipped"]
        print(result, "| skipped:", skipped)


if __name__ == "__main__":
    main()
