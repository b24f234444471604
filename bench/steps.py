"""Sequential latency: 1-, 3- and 50-step flows against Celery's ``chain`` of the same
length, side by side in one run (one private Redis, one plain ``celery worker -c 2``, one
flow at a time, the submitter ``.get()``s; taking turns run by run, and 1 and 3 steps
again back to back, each system's runs in a row), with the Redis commands each system spends per
step (``INFO commandstats`` around one 50-step run) and the time ``status`` takes on a
100,000-node run.

    python -m bench --only steps          (python -m bench.steps for this section alone)
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

STEPS = (1, 3, 50)
EAGER_OFF = "celery-graph, eager off"
STATUS_NODES = 100_000


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank: p95 of 20 values is the 19th."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.4999)))
    return ordered[rank - 1]


def _graph(n: int, eager: bool = True) -> Any:
    """``n`` no-op steps; ``eager=False``: of a task declared ``graph_eager=False``, so
    every step is a broker message (eager successors off), on the same worker."""
    from bench.apps import g_noop, g_noop_published
    from celery_graph import Sequence

    noop = g_noop if eager else g_noop_published
    if n == 1:
        return noop.bind(id="s0")
    return Sequence(tuple(noop.bind(id=f"s{i}") for i in range(n)))


def _chain(n: int) -> Any:
    from celery import chain

    from bench.apps import c_noop

    return chain(*[c_noop.si() for _ in range(n)])


def _runners(n: int) -> dict[str, Callable[[], Any]]:
    flow, off = _graph(n), _graph(n, eager=False)
    flow.compile()  # compiled once, as for any flow a service submits repeatedly
    off.compile()
    return {
        # submit(): a bare node's apply_async is Celery's (a plain task), not a run
        "celery-graph": lambda: flow.submit().get(timeout=120),
        EAGER_OFF: lambda: off.submit().get(timeout=120),
        "celery chain": lambda: (
            _chain(n).apply_async().get(timeout=120, disable_sync_subtasks=False)
        ),
    }


def commands(client: redis.Redis, fn: Callable[[], Any]) -> dict[str, int]:
    """Redis commands by name that ``fn`` caused (INFO commandstats before and after; the
    workers' own polling in that time included, as it is part of what a step costs)."""

    def snapshot() -> dict[str, int]:
        return {
            name.removeprefix("cmdstat_"): int(v["calls"])
            for name, v in client.info("commandstats").items()
        }

    before = snapshot()
    fn()
    after = snapshot()
    diff = {k: after[k] - before.get(k, 0) for k in after}
    # the two INFO calls themselves
    diff["info"] = diff.get("info", 0) - 1
    return {k: v for k, v in sorted(diff.items(), key=lambda kv: -kv[1]) if v > 0}


def _timed(
    lengths: tuple[int, ...], turns: Callable[[list[str], int], list[str]], p95: bool
) -> dict[str, Any]:
    """p50 (and p95) per flow length and system, each run timed on its own; ``turns``
    gives the order the systems run in for a flow length (a name per run)."""
    out: dict[str, Any] = {}
    for n in lengths:
        runners = _runners(n)
        for fn in runners.values():  # warm: connections, the stored graph, imports
            for _ in range(3):
                fn()
        times: dict[str, list[float]] = {name: [] for name in runners}
        for name in turns(list(runners), n):
            start = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - start)
        row: dict[str, Any] = {}
        for name, ts in times.items():
            row[name] = {"p50 ms": round(statistics.median(ts) * 1000, 2)}
            if p95:
                row[name]["p95 ms"] = round(percentile(ts, 0.95) * 1000, 2)
        chain = row["celery chain"]["p50 ms"]
        row["ratio p50"] = round(row["celery-graph"]["p50 ms"] / chain, 2)
        row["ratio p50, eager off"] = round(row[EAGER_OFF]["p50 ms"] / chain, 2)
        out[f"{n} step" + ("s" if n > 1 else "")] = row
    return out


def latency(repeats: dict[int, int]) -> dict[str, Any]:
    """p50 and p95 per flow length and system; the systems take turns run by run."""
    return _timed(STEPS, lambda names, n: [x for _ in range(repeats[n]) for x in names], True)


def back_to_back(runs: int, blocks: int = 4, lengths: tuple[int, ...] = (1, 3)) -> dict[str, Any]:
    """p50 per flow length and system when each system runs ``runs`` flows in a row (a
    service submitting in a loop): what a run leaves behind, the next one meets. The
    systems take turns block by block, ``blocks`` blocks each."""
    return _timed(
        lengths,
        lambda names, n: [x for _ in range(blocks) for x in names for _ in range(runs)],
        False,
    )


def commands_per_step(url: str, n: int = 50) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    out: dict[str, Any] = {}
    for name, fn in _runners(n).items():
        fn()  # warm
        counted = commands(client, fn)
        out[name] = {
            "per step": round(sum(counted.values()) / n, 1),
            "top": {k: round(v / n, 2) for k, v in list(counted.items())[:8]},
        }
    return out


def _tree(root: int) -> list[int]:
    """Process ``root`` and every descendant alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def _cpu_ms(pids: list[int]) -> float:
    """CPU milliseconds every thread of ``pids`` has run (``/proc/<pid>/task/*/schedstat``:
    nanoseconds, where ``/proc/<pid>/stat`` counts 10 ms ticks)."""
    total = 0
    for pid in pids:
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
        except OSError:  # gone, or a thread that ended meanwhile
            continue
    return total / 1e6


def cpu_per_step(url: str, worker_pid: int, n: int = 50, runs: int = 20) -> dict[str, Any]:
    """CPU milliseconds a step costs the worker (its process and its pool processes) and
    Redis (INFO cpu), over ``runs`` flows of ``n`` steps of each system: what a step
    costs, less sensitive than latency to the other work on a shared machine. The systems
    take turns run by run (the order alternating), so a burst of other sessions' load
    falls on all of them alike, and each run's CPU is read to the nanosecond."""
    client = redis.Redis.from_url(url)

    def redis_cpu() -> float:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    runners = _runners(n)
    for fn in runners.values():  # warm
        fn()
    pids = _tree(worker_pid)
    worker = dict.fromkeys(runners, 0.0)
    server = dict.fromkeys(runners, 0.0)
    names = list(runners)
    for i in range(runs):
        for name in names if i % 2 else names[::-1]:
            cpu0, redis0 = _cpu_ms(pids), redis_cpu()
            runners[name]()
            worker[name] += _cpu_ms(pids) - cpu0
            server[name] += (redis_cpu() - redis0) * 1000
    steps = n * runs
    return {
        name: {
            "worker CPU ms": round(worker[name] / steps, 3),
            "Redis CPU ms": round(server[name] / steps, 3),
        }
        for name in names
    }


def status_time(url: str, nodes: int = STATUS_NODES, repeats: int = 5) -> dict[str, Any]:
    """The summary the CLI's ``status`` prints (``GraphRun.summary()``: the kept counts)
    and ``GraphRun.status()`` (every node, what ``status --all`` reads), on a run of
    ``nodes`` nodes (a fan-out no worker consumes: submitted, never run)."""
    from bench.apps import app, g_noop
    from celery_graph import Parallel

    queue = f"bench-status-{uuid.uuid4().hex[:6]}"  # nobody consumes it
    import dataclasses

    base = dataclasses.replace(g_noop, options=(("queue", queue),))
    flow = (
        base.bind(id="start")
        >> Parallel(tuple(base.bind(id=f"m{i}") for i in range(nodes - 2)))
        >> base.bind(id="join")
    )
    flow.compile()
    run = flow.apply_async()

    def timed(read: Any) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            read()
            times.append(time.perf_counter() - start)
        return round(statistics.median(times) * 1000, 1)

    try:
        # what `celery-graph status` reads (no --all): the counts the scripts keep; and the
        # full read of every node (`status --all`, `run.status()`)
        summary = timed(run.summary)
        return {"nodes": nodes, "status ms": summary, "status --all ms": timed(run.status)}
    finally:
        run.cancel()
        redis.Redis.from_url(url).delete(queue)
        del app


def main(quick: bool = False, processes: int = 2) -> dict[str, Any]:
    """The whole section on its own private Redis and worker."""
    from bench.run import ROOT, celery_workers
    from celery_graph.testing import PrivateRedis

    server = PrivateRedis().start()
    url = server.url
    os.environ["BENCH_REDIS_URL"] = url
    sys.path.insert(0, str(ROOT))
    try:
        return section(url, quick, processes, celery_workers)
    finally:
        server.cleanup()


def section(url: str, quick: bool, processes: int, workers: Callable[..., Any]) -> dict[str, Any]:
    # the p50 of 100 runs of 3 steps moved by about 4% from one bench run to the next (a
    # p95 half again as long as the p50): 300 runs of 1 and 3 steps, 40 of 50 steps
    repeats = {1: 20, 3: 20, 50: 5} if quick else {1: 300, 3: 300, 50: 40}
    with workers(url, processes) as proc:
        out: dict[str, Any] = {"latency": latency(repeats)}
        out["back to back"] = back_to_back(15 if quick else 60)
        out["redis commands per step, 50 steps"] = commands_per_step(url)
        out["cpu per step, 50 steps"] = cpu_per_step(url, proc.pid, runs=6 if quick else 20)
    out["status"] = status_time(url, 10_000 if quick else STATUS_NODES)
    return out


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """The goals of issue 22 that this section measures."""
    lat = results["latency"]
    status = results["status"]
    return {
        "eager off: 3-step p50 / Celery chain p50 (<= 1.0)": lat["3 steps"]["ratio p50, eager off"],
        "eager off: 50-step per step / Celery chain (<= 1.0)": lat["50 steps"][
            "ratio p50, eager off"
        ],
        "eager on: 3-step p50 / Celery chain p50 (<= 0.8)": lat["3 steps"]["ratio p50"],
        "eager on: 50-step per step / Celery chain (<= 0.3)": lat["50 steps"]["ratio p50"],
        f"status of a {status['nodes']:,}-node run, ms (< 50)": status["status ms"],
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        "| flow | celery-graph p50 (p95) | eager off p50 (p95) | Celery chain p50 (p95) "
        "| ratio p50 | eager off |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in results["latency"].items():
        g, o, c = row["celery-graph"], row[EAGER_OFF], row["celery chain"]
        lines.append(
            f"| {name} | {g['p50 ms']} ms ({g['p95 ms']}) | {o['p50 ms']} ms ({o['p95 ms']}) "
            f"| {c['p50 ms']} ms ({c['p95 ms']}) | {row['ratio p50']} "
            f"| {row['ratio p50, eager off']} |"
        )
    fifty = results["latency"].get("50 steps")
    if fifty:
        g, o, c = (fifty[k]["p50 ms"] / 50 for k in ("celery-graph", EAGER_OFF, "celery chain"))
        lines.append(
            f"\n50 steps, per step: celery-graph {g:.2f} ms, eager off {o:.2f} ms, "
            f"Celery chain {c:.2f} ms."
        )
    b2b = results.get("back to back")
    if b2b:
        lines.append(
            "Back to back (each system runs its flows in a row, taking turns by blocks), p50 "
            "against Celery's chain: "
            + ", ".join(
                f"{name} {row['ratio p50']} (eager off {row['ratio p50, eager off']}; "
                f"chain {row['celery chain']['p50 ms']} ms)"
                for name, row in b2b.items()
            )
            + "."
        )
    cmds = results["redis commands per step, 50 steps"]
    lines.append(
        "Redis commands per step (INFO commandstats over one 50-step run): "
        + ", ".join(f"{k} {v['per step']}" for k, v in cmds.items())
        + "."
    )
    cpu = results.get("cpu per step, 50 steps")
    if cpu:
        lines.append(
            "CPU per step (50-step flows): "
            + ", ".join(
                f"{k} {v['worker CPU ms']} ms in the worker, {v['Redis CPU ms']} ms in Redis"
                for k, v in cpu.items()
            )
            + "."
        )
        chain = cpu["celery chain"]["worker CPU ms"]
        if chain:
            lines.append(
                "Worker CPU per step against Celery's chain: "
                + ", ".join(
                    f"{k} {v['worker CPU ms'] / chain:.2f}"
                    for k, v in cpu.items()
                    if k != "celery chain"
                )
                + "."
            )
    st = results["status"]
    lines.append(
        f"status of a {st['nodes']:,}-node run: {st['status ms']} ms (the kept counts; "
        f"every node, `status --all`: {st.get('status --all ms', '-')} ms)."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    import json

    res = main(quick="--quick" in sys.argv)
    print(json.dumps(res, indent=2))
    print(table(res))
