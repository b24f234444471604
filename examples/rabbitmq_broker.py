"""RabbitMQ as the broker, Redis for graph state.

Messages go through RabbitMQ; celery-graph keeps graphs, barriers and results in Redis
(``graph_redis_url``). Nothing else changes.

    export CELERY_BROKER_URL=amqp://guest:guest@127.0.0.1:5672//
    export CELERY_GRAPH_REDIS_URL=redis://localhost:6379/0
    celery -A examples.rabbitmq_broker worker -l INFO
    python -m examples.rabbitmq_broker
"""

from __future__ import annotations

import os

from celery import Celery

from celery_graph import task

BROKER_URL = os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("CELERY_GRAPH_REDIS_URL", "redis://localhost:6379/0")

app = Celery("examples.rabbitmq_broker", broker=BROKER_URL)
app.conf.graph_redis_url = REDIS_URL
app.conf.task_default_queue = os.environ.get("EXAMPLE_QUEUE", "graph-example")


@task
def fetch(city: str = "Lisbon") -> dict:
    return {"city": city, "temps": [18, 21, 19, 23]}


@task
def mean(fetch: dict) -> float:
    return sum(fetch["temps"]) / len(fetch["temps"])


@task
def peak(fetch: dict) -> int:
    return max(fetch["temps"])


@task
def summary(fetch: dict, mean: float, peak: int) -> str:
    return f"{fetch['city']}: mean {mean:.1f}, peak {peak}"


flow = fetch >> (mean | peak) >> summary


def main() -> None:
    run = flow.apply_async(city="Porto")
    print("run", run.id)
    print(run.get(timeout=60))


if __name__ == "__main__":
    main()
