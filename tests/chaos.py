"""Chaos check: many graph runs while workers are SIGKILLed at random.

    python -m tests.chaos --runs 200 --kills 12        # prints the figures, exit 1 if any > 0

Reports runs lost (not succeeded by the deadline), nodes doubled (a node that completed in
two workers that were never killed: a duplicate dispatch) and joins doubled (the same, for
the join). All three must be 0. Re-executions are reported separately: a node whose worker
was killed during the call, or after the call but before its result was stored, runs again
(execution is at-least-once; its stored result and dispatch still happen once).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass

import redis

from celery_graph import GraphRun, RunFailed, RunTimeout

EIGHT_EDGES = [("t1", "t2"), ("t1", "t3"), ("t1", "t4"), ("t2", "t5"), ("t4", "t6"),
               ("t4", "t7"), ("t5", "t8"), ("t3", "t8"), ("t6", "t8"), ("t7", "t8")]
JOINS = ("t8",)


@dataclass
class ChaosReport:
    runs: int
    kills: int
    workers: int
    seconds: float
    runs_lost: int
    nodes_doubled: int
    joins_doubled: int
    order_violations: int
    reexecuted_nodes: int
    stuck: list[str]  # runs lost, with their node states, to diagnose a failure

    @property
    def ok(self) -> bool:
        return not (self.runs_lost or self.nodes_doubled or self.joins_doubled
                    or self.order_violations)


def run_chaos(redis_url: str, runs: int, kills: int, workers: int = 3,
              deadline: float = 60.0, seed: int | None = None) -> ChaosReport:
    from tests.tasks import t1, t2, t3, t4, t5, t6, t7, t8
    from tests.workers import Workers

    rng = random.Random(seed)
    pool = Workers(redis_url, concurrency=2)
    pool.extra_env["CGTEST_TRACE_PID"] = "1"
    client = redis.Redis.from_url(redis_url)
    started = time.monotonic()
    try:
        names = [pool.start(f"chaos{i}") for i in range(workers)]
        pool.supervise()  # killed workers come back, as under systemd or Kubernetes
        flow = t1 >> ((t2 >> t5) | t3 | (t4 >> (t6 | t7))) >> t8
        tags = [uuid.uuid4().hex[:12] for _ in range(runs)]
        submitted: list[GraphRun] = []

        done_kills: list[str] = []

        def killer() -> None:
            for _ in range(kills):
                time.sleep(rng.uniform(0.3, 1.2))
                victim = rng.choice(names)
                pool.kill(victim, restart=True)  # its messages come back later
                done_kills.append(victim)

        chaos = threading.Thread(target=killer)
        chaos.start()
        for tag in tags:
            submitted.append(flow.submit({"tag": tag, "delay": rng.uniform(0.0, 0.08)},
                                         app=pool.app))
            time.sleep(rng.uniform(0.0, 0.03))
        chaos.join()
        lost = 0
        stuck: list[str] = []
        end_at = time.monotonic() + deadline
        for run in submitted:
            try:
                run.get(timeout=max(1.0, end_at - time.monotonic()))
            except (RunFailed, RunTimeout) as exc:
                lost += 1
                status = run.status()
                states = {n: (s.state, s.attempts, s.worker) for n, s in status.nodes.items()}
                stuck.append(f"{run.id} {status.state} {type(exc).__name__}: {states}")
        nodes_doubled = joins_doubled = order = reexec = 0
        for tag in tags:
            trace = [e.decode() for e in client.lrange(f"cgtest-trace:{tag}", 0, -1)]
            for i in range(1, 9):
                node = f"t{i}"
                pids = [int(e.rsplit(":", 1)[1]) for e in trace if e.startswith(f"pid:{node}:")]
                survivors = [p for p in pids if p not in pool.killed_pids]
                if len(survivors) > 1:
                    nodes_doubled += 1
                    if node in JOINS:
                        joins_doubled += 1
                if trace.count(f"start:{node}") > 1:
                    reexec += 1
            for before, after in EIGHT_EDGES:
                if f"end:{before}" in trace and f"start:{after}" in trace and (
                    trace.index(f"start:{after}") < trace.index(f"end:{before}")
                ):
                    order += 1
            client.delete(f"cgtest-trace:{tag}")
        elapsed = round(time.monotonic() - started, 1)
        return ChaosReport(runs, len(done_kills), workers, elapsed, lost,
                           nodes_doubled, joins_doubled, order, reexec, stuck)
    finally:
        pool.stop()
        pool.app.connection_for_write().default_channel.queue_purge(pool.queue)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    from celery_graph.devserver import redis_url

    with redis_url(private=True) as url:
        report = run_chaos(url, args.runs, args.kills, args.workers, seed=args.seed)
    print(json.dumps(asdict(report), indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
