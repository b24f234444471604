"""Map-reduce over batches with a named group.

Each batch is one node (the same task bound to different data under its own id); the
group is named "batch", so the reducer's parameter ``batch`` receives the list of the
members' results, in member order.

    export CELERY_GRAPH_REDIS_URL=redis://localhost:6379/0
    celery -A examples.map_reduce worker -l INFO
    python -m examples.map_reduce
"""

from __future__ import annotations

import functools
import operator
import os
from collections import Counter

from celery import Celery

from celery_graph import task

REDIS_URL = os.environ.get("CELERY_GRAPH_REDIS_URL", "redis://localhost:6379/0")
app = Celery("examples.map_reduce", broker=REDIS_URL)

TEXT = [
    "the quick brown fox",
    "jumps over the lazy dog",
    "the dog sleeps",
    "a fox runs",
    "the end",
]


@task
def count_words(lines: list[str]) -> dict[str, int]:
    """Map: word counts of one batch of lines."""
    return dict(Counter(word for line in lines for word in line.split()))


@task
def merge(batch: list[dict[str, int]], top: int = 3) -> list[list]:
    """Reduce: add the batches' counts; the most common words first."""
    total: Counter[str] = Counter()
    for counts in batch:
        total.update(counts)
    return [[word, n] for word, n in total.most_common(top)]


def batches(lines: list[str], size: int) -> list[list[str]]:
    return [lines[i : i + size] for i in range(0, len(lines), size)]


mappers = [
    count_words.bind(id=f"count_{i}", lines=chunk) for i, chunk in enumerate(batches(TEXT, 2))
]
flow = functools.reduce(operator.or_, mappers).named("batch") >> merge


def main() -> None:
    run = flow.apply_async(top=3)
    print("run", run.id)
    print(run.get(timeout=60))


if __name__ == "__main__":
    main()
