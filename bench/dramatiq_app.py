"""dramatiq + dramatiq-workflow actors for the benchmark (bench-only dependency)."""

from __future__ import annotations

import os

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.rate_limits.backends import RedisBackend
from dramatiq_workflow import WorkflowMiddleware

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")

broker = RedisBroker(url=REDIS_URL, namespace="bench-dramatiq")
broker.add_middleware(WorkflowMiddleware(RedisBackend(client=redis.Redis.from_url(REDIS_URL))))
dramatiq.set_broker(broker)
_client = redis.Redis.from_url(REDIS_URL)


@dramatiq.actor(queue_name="bench", max_retries=0)
def d_noop():
    return None


@dramatiq.actor(queue_name="bench", max_retries=0)
def d_done(tag: str):
    """The last step of a workflow: tells the waiting client."""
    _client.rpush(f"bench-dramatiq-done:{tag}", 1)
    _client.expire(f"bench-dramatiq-done:{tag}", 600)
