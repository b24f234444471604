"""The worker registry and per-worker task counters, as stored in Redis.

    P:worker:<hostname>           hash  hostname, pid, queues (JSON), started, heartbeat, state
    P:worker:<hostname>:metrics   hash  counters written by the pool processes
    P:workers                     zset  hostname -> last heartbeat (the listing index)

Every key expires ``ttl`` seconds after the last heartbeat, so a worker that dies without
cleaning up, even by SIGKILL, drops out of the listing.
"""

from __future__ import annotations

from typing import Any

from ..keys import Keys
from .connection import translated


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class WorkerStore:
    def __init__(self, client: Any, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def reset_counters(self, hostname: str) -> None:
        """A restarted worker with the same name starts its counters from zero, like a
        Prometheus counter after a process restart."""
        translated("resetting worker counters",
                   lambda: self.client.delete(self.keys.worker_metrics(hostname)))

    def beat(
        self, hostname: str, fields: dict[str, Any], in_flight: int | None, now: float, ttl: int
    ) -> None:
        worker_key = self.keys.worker(hostname)
        metrics_key = self.keys.worker_metrics(hostname)
        index = self.keys.workers_index()
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(worker_key, mapping=fields)
        pipe.expire(worker_key, ttl)
        pipe.hsetnx(metrics_key, "processed", 0)  # so a fresh worker shows zeros
        if in_flight is not None:
            pipe.hset(metrics_key, "in_flight", in_flight)
        pipe.expire(metrics_key, ttl)
        pipe.zadd(index, {hostname: now})
        pipe.zremrangebyscore(index, "-inf", now - ttl)
        pipe.expire(index, ttl)
        translated("writing a heartbeat", pipe.execute)

    def remove(self, hostname: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.keys.worker(hostname), self.keys.worker_metrics(hostname))
        pipe.zrem(self.keys.workers_index(), hostname)
        translated("removing a worker", pipe.execute)

    def live(self) -> list[tuple[str, dict[str, str], dict[str, str]]]:
        """(hostname, entry, counters) of every listed worker whose entry still exists."""

        def read() -> list[tuple[str, dict[str, str], dict[str, str]]]:
            hostnames = [_text(h) for h in self.client.zrange(self.keys.workers_index(), 0, -1)]
            pipe = self.client.pipeline(transaction=False)
            for h in hostnames:
                pipe.hgetall(self.keys.worker(h))
                pipe.hgetall(self.keys.worker_metrics(h))
            replies = pipe.execute()
            out = []
            for i, h in enumerate(hostnames):
                entry = {_text(k): _text(v) for k, v in replies[2 * i].items()}
                if entry:  # else expired between the two reads, or never fully written
                    counters = {_text(k): _text(v) for k, v in replies[2 * i + 1].items()}
                    out.append((h, entry, counters))
            return out

        return translated("reading the worker registry", read)

    def count_task(
        self, hostname: str, counter: str | None, runtime: float | None, ttl: int
    ) -> None:
        """One task ran to an end state in a pool process of ``hostname``."""
        key = self.keys.worker_metrics(hostname)
        # MULTI/EXEC: a scrape never sees "processed" without its outcome counter
        pipe = self.client.pipeline(transaction=True)
        pipe.hincrby(key, "processed", 1)
        if counter:
            pipe.hincrby(key, counter, 1)
        if runtime is not None:
            pipe.hincrbyfloat(key, "runtime_total", runtime)
        pipe.expire(key, ttl)
        translated("counting a task", pipe.execute)

    def counters(self, hostname: str) -> dict[str, float]:
        raw = translated("reading worker counters",
                         lambda: self.client.hgetall(self.keys.worker_metrics(hostname)))
        return {_text(k): float(v) for k, v in raw.items()}
