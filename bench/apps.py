"""The Celery app the benchmark workers run: plain Celery tasks (floor, canvas) and
celery-graph tasks, all no-ops unless said. Configured from BENCH_REDIS_URL."""

from __future__ import annotations

import os
import time

from celery import Celery

from celery_graph import task

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")

app = Celery("bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    graph_key_prefix=os.environ.get("BENCH_PREFIX", "bench"),
    graph_result_ttl=int(os.environ.get("BENCH_RESULT_TTL", "3600")),
    graph_store_ttl=int(os.environ.get("BENCH_STORE_TTL", "3600")),
    graph_run_ttl=int(os.environ.get("BENCH_RUN_TTL", "7200")),
    task_default_queue="bench",
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=int(os.environ.get("BENCH_PREFETCH", "4")),
    result_expires=600,
    worker_hijack_root_logger=False,
)


# -- plain Celery ------------------------------------------------------------------
@app.task(name="bench.c_noop")
def c_noop(*args, **kwargs):
    return None


@app.task(name="bench.c_item")
def c_item(x):
    return x * 2


@app.task(name="bench.c_sleep")
def c_sleep(*args, **kwargs):
    time.sleep(0.05)


# -- celery-graph -------------------------------------------------------------------
@task(name="bench.g_noop")
def g_noop():
    return None


# the same, always published: what a step costs with eager successors off
@task(name="bench.g_noop_published", graph_eager=False)
def g_noop_published():
    return None


@task(name="bench.g_sleep")
def g_sleep():
    time.sleep(0.05)


@task(name="bench.g_items")
def g_items(n: int = 10):
    return list(range(n))


@task(name="bench.g_item")
def g_item(g_items):
    return g_items * 2


@task(name="bench.g_sum")
def g_sum(g_item):
    return len(g_item)
