"""Chaos check: graph runs on plain `celery worker`s with Celery's stock settings while
workers are SIGKILLed with their pools, the broker restarts and loses every message it
held, and the graph Redis restarts.

    python -m tests.support.chaos --runs 200 --kills 12   # prints the figures; exit 1 unless all 0

The graph is ch_a >> (ch_b >> ch_d | ch_c) >> ch_join, data flowing through it (a run's
result is 5 * (seed + 1) + 5). Reported, all of which must be 0:

- runs lost: not succeeded by the deadline;
- wrong results: a run whose result is not the one its seed gives;
- nodes doubled: a node whose function completed twice although nothing recovered it:
  no fault struck during its executions, the reconciler never sent it again and no
  worker died running it (execution is at-least-once: a node whose worker was killed, or
  whose message seemed lost, or whose completion could not be stored because Redis or
  the broker was away, runs again; that is counted as a re-execution, not a double);
- joins doubled: the same, for the join;
- order violations: a node that started before a predecessor's first completion.

Also reported: re-executions, and how long runs took to finish after the last fault.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field

import redis

from celery_graph import GraphRun, RunFailed, RunTimeout, StoreUnavailable
from tests.support.helpers import starts_processes

EDGES = [
    ("ch_a", "ch_b"),
    ("ch_a", "ch_c"),
    ("ch_b", "ch_d"),
    ("ch_d", "ch_join"),
    ("ch_c", "ch_join"),
]
NODES = ("ch_a", "ch_b", "ch_c", "ch_d", "ch_join")
JOINS = ("ch_join",)


@dataclass
class ChaosReport:
    runs: int
    kills: int
    broker_restarts: int
    graph_restarts: int
    workers: int
    seconds: float
    runs_lost: int
    wrong_results: int
    nodes_doubled: int
    joins_doubled: int
    order_violations: int
    reexecuted_nodes: int
    finished_after_last_fault: float  # seconds from the last fault to the last run's end
    stuck: list[str] = field(default_factory=list)  # runs lost, with their node states
    # runs with a node doubled or out of order, described as the lost ones are
    suspect: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.runs_lost
            or self.wrong_results
            or self.nodes_doubled
            or self.joins_doubled
            or self.order_violations
        )


def expected(seed: int) -> int:
    return 5 * (seed + 1) + 5


@starts_processes
def run_chaos(
    trace_url: str,
    runs: int,
    kills: int,
    workers: int = 3,
    broker_restarts: int = 1,
    graph_restarts: int = 1,
    deadline: float = 120.0,
    lease: float | None = 3.0,
    seed: int | None = None,
) -> ChaosReport:
    from celery_graph.testing import PrivateRedis
    from tests.support.processes import Workers
    from tests.tasks import ch_a, ch_b, ch_c, ch_d, ch_join

    rng = random.Random(seed)
    broker = PrivateRedis().start()  # no persistence: a restart loses every message
    graph = PrivateRedis(appendonly=True).start()  # the graph state survives its restart
    pool = Workers(
        broker.url, concurrency=2, pool="prefork", graph_url=graph.url, stock=True, isolate=True
    )
    pool.extra_env["CGTEST_TRACE_REDIS_URL"] = trace_url
    if lease is not None:
        pool.extra_env.update(
            CELERY_GRAPH_QUEUED_LEASE=str(lease),
            CELERY_GRAPH_RUNNING_LEASE=str(lease),
            CELERY_GRAPH_RECONCILE_INTERVAL="0.5",
        )
        pool.app.conf.update(graph_queued_lease=lease, graph_running_lease=lease)
    traces = redis.Redis.from_url(trace_url)
    faults: list[float] = []  # wall-clock times of every fault
    started = time.monotonic()
    try:
        names = [pool.start(f"chaos{i}") for i in range(workers)]
        pool.supervise()  # killed workers come back, as under systemd or Kubernetes
        flow = ch_a >> ((ch_b >> ch_d) | ch_c) >> ch_join
        plan = ["kill"] * kills + ["broker"] * broker_restarts + ["graph"] * graph_restarts
        rng.shuffle(plan)
        submitted: list[tuple[GraphRun, int, str]] = []

        def chaos() -> None:
            for action in plan:
                time.sleep(rng.uniform(0.3, 1.2))
                faults.append(time.time())
                if action == "kill":
                    pool.kill(rng.choice(names), restart=True)
                elif action == "broker":
                    broker.stop()
                    broker.start()
                else:
                    graph.stop()
                    time.sleep(rng.uniform(0.2, 1.0))
                    graph.start()
                faults.append(time.time())

        thread = threading.Thread(target=chaos)
        thread.start()
        # submissions spread over the faults, so runs are in flight when they strike
        pace = 0.75 * len(plan) / max(runs, 1)
        for _ in range(runs):
            tag = uuid.uuid4().hex[:12]
            run_seed = rng.randrange(1000)
            inputs = {"seed": run_seed, "tag": tag, "delay": rng.uniform(0.0, 0.3)}
            submitted.append((_submit(flow, inputs, pool.app), run_seed, tag))
            time.sleep(rng.uniform(0.5, 1.5) * pace)
        thread.join()
        last_fault = time.monotonic()
        lost = wrong = 0
        stuck: list[str] = []
        end_at = time.monotonic() + deadline
        for run, run_seed, _tag in submitted:
            try:
                result = run.get(timeout=max(1.0, end_at - time.monotonic()))
            except (RunFailed, RunTimeout, StoreUnavailable) as exc:
                lost += 1
                stuck.append(_describe(run, exc, traces, _tag, faults))
                continue
            if result != expected(run_seed):
                wrong += 1
        recovered = time.monotonic() - last_fault
        doubled = joins_doubled = order = reexec = 0
        suspect: list[str] = []
        for run, _seed, tag in submitted:
            trace = [e.decode() for e in traces.lrange(f"cgtest-trace:{tag}", 0, -1)]
            try:
                nodes = run.status().nodes
                recovered_nodes = {n for n, s in nodes.items() if s.redelivered or s.lost}
            except Exception:  # a lost run's state may be gone; it is counted already
                recovered_nodes = set(NODES)
            d, j, o, r = _judge(trace, faults, recovered_nodes)
            if d or o:
                suspect.append(
                    _describe(run, RuntimeError("doubled or out of order"), traces, tag, faults)
                )
            doubled, joins_doubled, order, reexec = (
                doubled + d,
                joins_doubled + j,
                order + o,
                reexec + r,
            )
            traces.delete(f"cgtest-trace:{tag}")
        return ChaosReport(
            runs,
            kills,
            broker_restarts,
            graph_restarts,
            workers,
            round(time.monotonic() - started, 1),
            lost,
            wrong,
            doubled,
            joins_doubled,
            order,
            reexec,
            round(recovered, 1),
            stuck,
            suspect,
        )
    finally:
        pool.stop()
        broker.cleanup()
        graph.cleanup()


def _submit(flow, inputs: dict, app) -> GraphRun:
    """Submit, riding out a graph Redis restart (the submitter retries, as a client would),
    under an idempotency key: a submission whose answer the restart cut off may have
    created its run, which then runs (the reconciler publishes its roots), and a retry
    without the key would start a second run of the same inputs, whose nodes the trace
    of the tag would count as doubled."""
    end = time.monotonic() + 30
    while True:
        try:
            return flow.submit(inputs, app=app, idempotency_key=f"chaos:{inputs['tag']}")
        except StoreUnavailable:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


def _describe(
    run: GraphRun, exc: BaseException, traces: redis.Redis, tag: str, faults: list[float]
) -> str:
    """All there is to know about a lost run: its status, its raw record and node fields,
    whether the reconciler lists it, its trace and the faults' times."""
    trace = [e.decode() for e in traces.lrange(f"cgtest-trace:{tag}", 0, -1)]
    lines = [f"run {run.id} ({type(exc).__name__}: {exc}) tag {tag}", f"  trace: {trace}"]
    lines.append(f"  faults: {faults}")
    try:
        status = run.status()
        states = {n: (s.state, s.attempts, s.redelivered, s.lost) for n, s in status.nodes.items()}
        lines.append(f"  status {status.state}: {states}")
        state, keys = run._state, run._state.keys
        lines.append(f"  record: {state.client.hgetall(keys.run(run.id))}")
        lines.append(f"  nodes: {state.client.hgetall(keys.nodes(run.id))}")
        lines.append(
            f"  queued leases: {state.client.zrange(keys.queued(run.id), 0, -1, withscores=True)}"
        )
        lines.append(
            f"  running leases: {state.client.zrange(keys.leases(run.id), 0, -1, withscores=True)}"
        )
        lines.append(f"  reconciler's index: {state.client.zscore(keys.running_index(), run.id)}")
    except Exception as err:  # the run's state may be gone
        lines.append(f"  (status: {err!r})")
    return "\n".join(lines)


def _judge(trace: list[str], faults: list[float], recovered: set[str]) -> tuple[int, int, int, int]:
    """(doubled, joins doubled, order violations, re-executed) for one run's trace.
    ``recovered``: nodes the engine sent again to recover them (the reconciler re-sent
    them, or a worker died running them), whose second completion is at-least-once."""
    starts: dict[str, list[float]] = {n: [] for n in NODES}
    ends: dict[str, list[float]] = {n: [] for n in NODES}
    for event in trace:
        kind, node, when = event.split(":")[:3]
        (starts if kind == "start" else ends)[node].append(float(when))
    doubled = joins = order = reexec = 0
    for node in NODES:
        if len(starts[node]) > 1:
            reexec += 1
        if len(ends[node]) > 1 and node not in recovered:
            window = (min(starts[node]), max(ends[node]))
            if not any(window[0] <= f <= window[1] for f in faults):
                doubled += 1
                joins += node in JOINS
    for before, after in EDGES:
        if ends[before] and starts[after] and min(starts[after]) < min(ends[before]):
            order += 1
    return doubled, joins, order, reexec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--broker-restarts", type=int, default=2)
    parser.add_argument("--graph-restarts", type=int, default=2)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--lease",
        type=float,
        default=None,
        help="queued and running lease in seconds (default: the settings' defaults, 30 s and 15 s)",
    )
    args = parser.parse_args(argv)
    from celery_graph.testing import redis_url

    with redis_url(private=True) as url:
        report = run_chaos(
            url,
            args.runs,
            args.kills,
            args.workers,
            args.broker_restarts,
            args.graph_restarts,
            deadline=300.0,
            lease=args.lease,
            seed=args.seed,
        )
    print(json.dumps(asdict(report), indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
