"""Routing and priority with real graph-worker subprocesses.

- `@task(queue="cgops-gpu")` nodes go to that queue; a `graph-worker -Q cgops-gpu`
  runs them while the CPU worker (default queue) runs the rest of the same graph.
- `@task(priority=...)` is honoured. On Redis, kombu keeps one list per priority step
  and reads the lowest number first: 0 is the highest priority. On RabbitMQ the queue
  needs x-max-priority (task_queue_max_priority) and the highest number wins.
"""

from __future__ import annotations

import uuid

import kombu
import pytest
import redis

from celery_graph import GraphRun
from celery_graph.worker.heartbeat import live_workers
from tests.apps import ops_tasks as t
from tests.support.apps import build_app
from tests.support.helpers import wait_for
from tests.support.processes import start_worker

pytestmark = pytest.mark.slow  # graph-worker subprocesses, one of them on RabbitMQ

PREFIX = f"cgops:routing:{uuid.uuid4().hex[:6]}"


def test_gpu_nodes_run_on_the_gpu_worker_and_cpu_nodes_on_the_cpu_worker(redis_url, tmp_path):
    cpu_queue = f"cgops-cpu-{uuid.uuid4().hex[:8]}"
    app = build_app(redis_url, cpu_queue, key_prefix=PREFIX)
    workers = [
        start_worker(tmp_path, "cpu", broker_url=redis_url, queue=cpu_queue, prefix=PREFIX),
        start_worker(
            tmp_path,
            "gpu",
            broker_url=redis_url,
            queue=cpu_queue,
            prefix=PREFIX,
            extra_args=["-Q", t.GPU_QUEUE],
        ),
    ]
    try:
        registered = wait_for(
            lambda: len(ws := live_workers(app)) == 2 and ws, 20, "both workers in the registry"
        )
        assert {w.hostname.split("@")[0]: w.queues for w in registered} == {
            "cpu": [cpu_queue],
            "gpu": [t.GPU_QUEUE],
        }
        tag = uuid.uuid4().hex[:8]
        flow = (
            t.prepare.bind(tag=tag)
            >> (t.train.bind(tag=tag) | t.embed.bind(tag=tag))
            >> t.report.bind(tag=tag)
        )
        run = flow.submit(app=app)
        assert run.get(timeout=30) == "report"
        ran_on = {
            n: s.worker.split("@")[0] for n, s in GraphRun(run.id, app=app).status().nodes.items()
        }
        assert ran_on == {"prepare": "cpu", "train": "gpu", "embed": "gpu", "report": "cpu"}
        # the message itself named the queue (the spec carries the routing options)
        assert flow.compile().nodes["train"].options == {"queue": t.GPU_QUEUE}
    finally:
        for w in workers:
            w.stop()


def test_priority_order_holds_on_redis_for_a_worker_started_after_queueing(redis_url, tmp_path):
    queue = f"cgops-prio-{uuid.uuid4().hex[:8]}"
    app = build_app(redis_url, queue, key_prefix=PREFIX, priority=True)
    tag = uuid.uuid4().hex[:8]
    runs = [t.bulk.bind(tag=tag, n=i).submit(app=app) for i in range(4)]
    runs += [t.urgent.bind(tag=tag, n=i).submit(app=app) for i in range(2)]
    w = start_worker(
        tmp_path,
        "prio",
        broker_url=redis_url,
        queue=queue,
        prefix=PREFIX,
        concurrency=1,
        env={"CGOPS_PRIORITY": "1"},
    )
    try:
        for r in runs:
            r.get(timeout=30)
        order = [e[1] for e in t.events(redis.Redis.from_url(redis_url), tag) if e[0] == "start"]
        assert order[:2] == ["urgent0", "urgent1"], order
        assert sorted(order[2:]) == ["bulk0", "bulk1", "bulk2", "bulk3"]
    finally:
        w.stop()


RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


def rabbitmq_available() -> bool:
    try:
        with kombu.Connection(RABBITMQ, connect_timeout=2) as conn:
            conn.connect()
            return True
    except Exception:
        return False


@pytest.mark.skipif(not rabbitmq_available(), reason="no RabbitMQ at 127.0.0.1:5672")
def test_priority_order_holds_on_rabbitmq_with_x_max_priority(redis_url, tmp_path):
    queue = f"cgops-prio-amqp-{uuid.uuid4().hex[:8]}"
    app = build_app(RABBITMQ, queue, key_prefix=PREFIX, max_priority=10, graph_redis_url=redis_url)
    tag = uuid.uuid4().hex[:8]
    runs = [t.urgent.bind(tag=tag, n=i).submit(app=app) for i in range(3)]  # priority 0
    runs += [t.bulk.bind(tag=tag, n=i).submit(app=app) for i in range(2)]  # priority 9
    w = start_worker(
        tmp_path,
        "prio-amqp",
        broker_url=RABBITMQ,
        queue=queue,
        prefix=PREFIX,
        concurrency=1,
        extra_args=["--redis-url", redis_url],
        env={"CGOPS_MAX_PRIORITY": "10"},
    )
    try:
        for r in runs:
            r.get(timeout=30)
        order = [e[1] for e in t.events(redis.Redis.from_url(redis_url), tag) if e[0] == "start"]
        assert order[:2] == ["bulk0", "bulk1"], order  # 9 beats 0 on RabbitMQ
    finally:
        w.stop()
        with kombu.Connection(RABBITMQ) as conn:
            conn.default_channel.queue_delete(queue)
