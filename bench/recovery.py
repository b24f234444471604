"""Recovery times with Celery's stock settings and celery-graph's default leases.

    python -m bench.recovery          # a few minutes; prints a table, writes recovery.json

Each scenario runs plain `celery worker` processes (prefork, Celery's stock settings: no
acks_late in the app, the Redis broker's one-hour visibility timeout, prefetch 4) on a
private Redis, and measures how long after the fault a run finishes:

- a worker SIGKILLed with its pool while a node runs (running lease 15 s);
- the broker restarting without persistence, losing every queued message (queued
  lease 30 s; timed from the moment a worker is up again);
- the graph Redis (AOF) away for 8 s while a node runs (timed from its return).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import uuid
from pathlib import Path

import redis

OUT = Path(__file__).resolve().parent


def _chain(tag: str, delay: float):
    from tests.tasks import step

    return (
        step.bind(id="first", name="first", tag=tag)
        >> step.bind(id="middle", name="middle", tag=tag, delay=delay)
        >> step.bind(id="last", name="last", tag=tag)
    )


def _trace(url: str, tag: str) -> list[str]:
    return [e.decode() for e in redis.Redis.from_url(url).lrange(f"cgtest-trace:{tag}", 0, -1)]


def _wait(predicate, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("the scenario did not reach its fault point")
        time.sleep(0.05)


def worker_killed(url: str) -> float:
    from tests.support.processes import Workers

    w = Workers(url, pool="prefork", stock=True, isolate=True)
    tag = uuid.uuid4().hex[:12]
    try:
        w.start("a")
        w.start("b")
        run = _chain(tag, 5.0).submit(app=w.app)
        _wait(lambda: "start:middle" in _trace(url, tag), 60)
        w.kill(run.status().nodes["middle"].worker)
        killed = time.monotonic()
        run.get(timeout=300)
        return time.monotonic() - killed
    finally:
        w.stop()


def broker_lost(url: str) -> float:
    from celery_graph.testing import PrivateRedis
    from tests.support.processes import Workers

    broker = PrivateRedis().start()
    w = Workers(broker.url, pool="prefork", stock=True, isolate=True, graph_url=url)
    try:
        runs = [_chain(uuid.uuid4().hex[:12], 0.0).submit(app=w.app) for _ in range(5)]
        broker.stop()
        broker.start()
        w.start("a")
        up = time.monotonic()
        for run in runs:
            run.get(timeout=300)
        return time.monotonic() - up
    finally:
        w.stop()
        broker.cleanup()


def graph_redis_away(url: str) -> float:
    from celery_graph import GraphRun
    from celery_graph.testing import PrivateRedis
    from tests.support.processes import Workers

    graph = PrivateRedis(appendonly=True).start()
    w = Workers(url, pool="prefork", stock=True, isolate=True, graph_url=graph.url)
    w.extra_env["CGTEST_TRACE_REDIS_URL"] = url
    tag = uuid.uuid4().hex[:12]
    try:
        w.start("a")
        w.supervise()
        run = _chain(tag, 2.0).submit(app=w.app)
        _wait(lambda: "start:middle" in _trace(url, tag), 60)
        graph.stop()
        time.sleep(8)
        graph.start()
        back = time.monotonic()
        GraphRun(run.id, app=w.app).get(timeout=300)
        return time.monotonic() - back
    finally:
        w.stop()
        graph.cleanup()


SCENARIOS = {
    "worker SIGKILLed mid-node (stock Celery settings)": worker_killed,
    "broker restart lost every queued message": broker_lost,
    "graph Redis away 8 s mid-node": graph_redis_away,
}


def main(repeats: int = 3) -> dict[str, list[float]]:
    from celery_graph.testing import PrivateRedis

    server = PrivateRedis().start()
    results: dict[str, list[float]] = {}
    try:
        for name, scenario in SCENARIOS.items():
            results[name] = [round(scenario(server.url), 1) for _ in range(repeats)]
            print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
    finally:
        server.cleanup()
    print(f"| fault | finished after (s), median of {repeats} | each |")
    print("|---|---|---|")
    for name, times in results.items():
        print(f"| {name} | {statistics.median(times):.1f} | {', '.join(map(str, times))} |")
    (OUT / "recovery.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
