"""Run-scoped shared state: parallel branches update one counter without losing a write.

Run it:
    export CELERY_GRAPH_REDIS_URL=redis://localhost:6379/0
    celery -A examples.shared_state worker -l INFO
    python -m examples.shared_state
"""

from __future__ import annotations

import functools
import operator
import os

from celery import Celery

from celery_graph import task

REDIS_URL = os.environ.get("CELERY_GRAPH_REDIS_URL", "redis://localhost:6379/0")
app = Celery("examples.shared_state", broker=REDIS_URL)

SHARDS = ["alpha beta gamma", "beta gamma", "gamma delta epsilon zeta", "eta"]


@task(inject_context=True)
def scan(ctx, text: str) -> int:
    words = text.split()
    ctx.incr("words", len(words))  # atomic across the parallel scans
    for word in words:
        ctx.append("log", word)  # atomic and ordered
    return len(words)


@task(inject_context=True)
def summary(ctx) -> dict:
    return {"words": ctx.get("words"), "distinct": len(set(ctx.list("log")))}


scans = [scan.bind(id=f"scan_{i}", text=text) for i, text in enumerate(SHARDS)]
flow = functools.reduce(operator.or_, scans) >> summary


def main() -> None:
    run = flow.apply_async()
    print("run", run.id)
    print(run.get(timeout=60))


if __name__ == "__main__":
    main()
