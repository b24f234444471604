"""Drop celery-graph into a Celery app whose tasks already exist.

The first half is an ordinary Celery project: an app and two ``@app.task`` functions that
other code already calls with ``.delay()``. The second half wraps those same functions as
graph tasks with ``celery_graph.task``. Give the wrappers their own task names: the
default name (module.function) is the name Celery already gave the original task.

    export CELERY_GRAPH_REDIS_URL=redis://localhost:6379/0
    celery -A examples.existing_app worker -l INFO
    python -m examples.existing_app
"""

from __future__ import annotations

import os

from celery import Celery

import celery_graph

REDIS_URL = os.environ.get("CELERY_GRAPH_REDIS_URL", "redis://localhost:6379/0")

# -- the existing project ----------------------------------------------------------------

app = Celery("shop", broker=REDIS_URL, backend=REDIS_URL)
app.conf.graph_key_prefix = os.environ.get("CELERY_GRAPH_KEY_PREFIX", "shop:workflows")


@app.task
def fetch_orders(day: str) -> list[dict]:
    return [
        {"id": 1, "day": day, "amount": 120.0},
        {"id": 2, "day": day, "amount": 80.5},
        {"id": 3, "day": day, "amount": 42.0},
    ]


@app.task
def total(orders: list[dict]) -> float:
    return sum(o["amount"] for o in orders)


@app.task
def largest(orders: list[dict]) -> dict:
    return max(orders, key=lambda o: o["amount"])


# -- celery-graph on top: wrap the existing functions ----------------------------------

orders = celery_graph.task(name="shop.graph.fetch_orders")(fetch_orders.run).bind(id="orders")
revenue = celery_graph.task(name="shop.graph.total")(total.run).bind(id="revenue")
top_order = celery_graph.task(name="shop.graph.largest")(largest.run).bind(id="top_order")


@celery_graph.task(name="shop.graph.report")
def report(revenue: float, top_order: dict, day: str) -> str:
    return f"{day}: revenue {revenue:.2f}, largest order #{top_order['id']}"


# total() and largest() take a parameter called ``orders``: the node id "orders" feeds it.
flow = orders >> (revenue | top_order) >> report


def main() -> None:
    # The plain Celery tasks keep working as before...
    print(
        "plain celery:",
        total.delay(fetch_orders.delay("2026-01-01").get(timeout=30)).get(timeout=30),
    )
    # ...and the same functions run as a graph.
    run = flow.apply_async(day="2026-01-01")
    print("run", run.id)
    print(run.get(timeout=60))


if __name__ == "__main__":
    # Celery names plain @app.task functions defined in __main__ after app.main ("shop"),
    # not after this module as the worker sees it; importing the module by name keeps the
    # names the worker knows. (celery-graph's own @task needs no such step.)
    from examples.existing_app import main as _main

    _main()
