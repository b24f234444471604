"""Graph tasks for the subprocess tests. Each run-time event goes to the Redis list
``cgops:<tag>`` as "<event>:<node>:<hostname>:<pid>", so a test sees where, in which
order and how often a node ran."""

from __future__ import annotations

import os
import time

from celery import current_task, shared_task

from celery_graph import task
from celery_graph.state import state_for


def record(tag: str | None, event: str, name: str) -> None:
    if not tag:
        return
    host = current_task.request.hostname if current_task else "local"
    state_for(current_task.app).client.rpush(f"cgops:{tag}", f"{event}:{name}:{host}:{os.getpid()}")


def events(client, tag: str) -> list[list[str]]:
    return [e.decode().split(":", 3) for e in client.lrange(f"cgops:{tag}", 0, -1)]


def _work(tag, name, delay):
    record(tag, "start", name)
    if delay:
        time.sleep(delay)
    record(tag, "end", name)
    return name


@task
def ops_first(tag=None, delay: float = 0.0):
    return _work(tag, "ops_first", delay)


@task
def ops_long(ops_first, tag=None, delay: float = 0.0):
    return _work(tag, "ops_long", delay)


# A plain Celery task, run as a node through node(): late acks without
# reject_on_worker_lost, as many existing tasks are (GraphTask sets both).
@shared_task(name="tests.apps.ops_tasks.existing_long", acks_late=True, reject_on_worker_lost=False)
def existing_long(ops_first=None, tag=None, delay: float = 0.0):
    return _work(tag, "ops_long", delay)


@task
def ops_last(ops_long, tag=None):
    return _work(tag, "ops_last", 0) + f"<-{ops_long}"


@task
def ops_fail(tag=None):
    record(tag, "start", "ops_fail")
    raise RuntimeError("ops_fail failed on purpose")


# -- routing: CPU nodes on the default queue, GPU nodes on their own queue ------------

GPU_QUEUE = "cgops-gpu"


@task
def prepare(tag=None):
    return _work(tag, "prepare", 0)


@task(queue=GPU_QUEUE)
def train(prepare, tag=None):
    return _work(tag, "train", 0)


@task(queue=GPU_QUEUE)
def embed(prepare, tag=None):
    return _work(tag, "embed", 0)


@task
def report(train, embed, tag=None):
    return _work(tag, "report", 0)


# -- priority (0 is the highest on Redis) ---------------------------------------------


@task(priority=0)
def urgent(tag=None, n: int = 0):
    return _work(tag, f"urgent{n}", 0)


@task(priority=9)
def bulk(tag=None, n: int = 0):
    return _work(tag, f"bulk{n}", 0)
