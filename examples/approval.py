"""An approval: prepare >> wait_for("approval") >> ship.

The run stops at the wait without holding a worker: no worker slot is taken while it
waits, and nothing polls. A person (or a program) signals it, from Python, the command
line or the dashboard's form on the waiting node; ship receives the payload as
``approval``. Run it against a Redis (broker and graph state):

    export CELERY_GRAPH_REDIS_URL=redis://localhost:6379/0
    celery -A examples.approval worker -l INFO     # in one terminal
    python -m examples.approval                    # in another: starts, then approves
    celery-graph run examples.approval:flow --input order_id=8   # waits for a signal
    celery-graph signal RUN_ID approval --data '{"approved": false, "by": "bob"}'
"""

from __future__ import annotations

import os
import time

from celery import Celery

from celery_graph import task, wait_for

REDIS_URL = os.environ.get("CELERY_GRAPH_REDIS_URL", "redis://localhost:6379/0")
app = Celery("examples.approval", broker=REDIS_URL)


@task
def prepare(order_id: int = 1) -> dict:
    """Pretend to price an order."""
    return {"order_id": order_id, "total": 42}


@task
def ship(prepare: dict, approval: dict) -> str:
    order, by = prepare["order_id"], approval.get("by", "someone")
    if not approval.get("approved"):
        return f"order {order} not shipped: rejected by {by}"
    return f"order {order} shipped: approved by {by}"


flow = prepare >> wait_for("approval", timeout=3600) >> ship


def main() -> None:
    run = flow.apply_async(order_id=7)
    print("run", run.id)
    deadline = time.monotonic() + 60
    while run.status().nodes["approval"].state != "waiting":  # for the demo's output only
        if time.monotonic() > deadline:
            raise SystemExit("the run did not reach the wait: is a worker running?")
        time.sleep(0.1)
    print("waiting for approval; no worker is busy with it")
    run.signal("approval", {"approved": True, "by": "ana"})
    print(run.get(timeout=60))


if __name__ == "__main__":
    main()
