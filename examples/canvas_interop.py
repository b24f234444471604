"""Celery interop: existing tasks as nodes, and a graph as a step of a Celery chain.

Run it:
    export CELERY_GRAPH_REDIS_URL=redis://localhost:6379/0
    celery -A examples.canvas_interop worker -l INFO
    python -m examples.canvas_interop
"""

from __future__ import annotations

import os

from celery import Celery, chain

from celery_graph import node, task

REDIS_URL = os.environ.get("CELERY_GRAPH_REDIS_URL", "redis://localhost:6379/0")
app = Celery("examples.canvas_interop", broker=REDIS_URL, backend=REDIS_URL)


# -- tasks the application already had, plain Celery --------------------------------
@app.task
def fetch_order(order_id: int) -> dict:
    return {"id": order_id, "items": [3, 4]}


@app.task
def price(items: list[int], unit: int = 10) -> int:
    return sum(items) * unit


@app.task
def email(total: int) -> str:
    return f"receipt sent: {total} EUR"


# -- a graph around them -------------------------------------------------------------
@task
def with_tax(price: int) -> int:
    return round(price * 1.2)


# price (an existing task) is a node; its `items` comes from the run inputs
flow = node(price.s(unit=25), id="price") >> with_tax


def main() -> None:
    # fetch_order, then the whole graph, then email with the graph's result. A dict
    # from the previous step is merged into the run inputs ({"id": 42, "items": [3, 4]}).
    result = chain(fetch_order.s(42), flow.s(), email.s()).apply_async()
    print(result.get(timeout=60))


if __name__ == "__main__":
    main()
