"""Route one node to a GPU pool: ``@task(queue="gpu")``.

Every message of the ``embed`` node goes to the ``gpu`` queue; the other nodes use the
default queue. Run a worker per pool:

    export CELERY_GRAPH_REDIS_URL=redis://localhost:6379/0
    graph-worker -A examples.gpu_routing -Q gpu -n gpu@%h         # the GPU machines
    celery -A examples.gpu_routing worker -Q celery -n cpu@%h     # everything else
    python -m examples.gpu_routing

(``celery -A examples.gpu_routing worker -Q gpu`` consumes the GPU queue just as well.)
"""

from __future__ import annotations

import os
import socket

from celery import Celery, current_task

from celery_graph import task

REDIS_URL = os.environ.get("CELERY_GRAPH_REDIS_URL", "redis://localhost:6379/0")
app = Celery("examples.gpu_routing", broker=REDIS_URL)


def where() -> str:
    return current_task.request.hostname or socket.gethostname()


@task
def tokenize(text: str = "graphs on celery workers") -> list[str]:
    return text.split()


@task(queue="gpu", max_retries=2)
def embed(tokenize: list[str]) -> dict:
    """Stands in for a model on a GPU: a vector per token, and where it ran."""
    return {"vectors": [[len(t), t.count("e")] for t in tokenize], "host": where()}


@task
def index(embed: dict) -> dict:
    return {"indexed": len(embed["vectors"]), "embedded_on": embed["host"], "indexed_on": where()}


flow = tokenize >> embed >> index


def main() -> None:
    run = flow.apply_async(text="route heavy nodes to the gpu pool")
    print("run", run.id)
    print(run.get(timeout=60))
    for node_id, node in run.status().nodes.items():
        print(f"{node_id}: ran on {node.worker}")


if __name__ == "__main__":
    main()
