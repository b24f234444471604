"""The cost of a concurrency limit: 1,000 runs of a flow without a limit and with
``flow.with_concurrency`` (docs/concurrency.md).

    python -m bench.limits [--runs 1000] [--repeats 3]   # prints a table, writes limits.json

``overhead`` compares the medians of each case; ``paired`` is the median of each
repeat's time against the unlimited time of the same round (less hurt by drift).

Every run is submitted at once, then waited for; the time runs from the first submission
to the last result, on a private Redis with 2 prefork worker processes (bench.apps). Three
flows of the same two nodes (``g_noop >> g_sleep``, 50 ms of work):

- ``unlimited``: no limit;
- ``limit 1000``: a limit no run waits for (the cost of taking and freeing a slot);
- ``limit 16``: most runs wait ``queued`` and start as others end (the cost of queueing:
  each end frees a slot and starts the next run). 16 runs at once still keep both worker
  processes busy, so a slower result is the limit's own cost, not less parallelism.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent


def _flow(limit: int | None) -> Any:
    from bench.apps import g_noop, g_sleep

    flow = (g_noop >> g_sleep).with_name(f"bench-limit-{uuid.uuid4().hex[:8]}")
    return flow if limit is None else flow.with_concurrency(limit)


def _timed(limit: int | None, runs: int) -> float:
    flow = _flow(limit)
    flow.compile()
    start = time.perf_counter()
    handles = [flow.apply_async() for _ in range(runs)]
    for handle in handles:
        handle.get(timeout=900)
    return time.perf_counter() - start


CASES = {"unlimited": None, "limit 1000": 1000, "limit 16": 16}


def main(runs: int, repeats: int) -> dict[str, Any]:
    from bench.run import celery_workers
    from celery_graph.testing import PrivateRedis

    server = PrivateRedis().start()
    os.environ["BENCH_REDIS_URL"] = server.url  # before bench.apps is imported
    from bench.apps import app

    app.conf.broker_url = server.url
    app.conf.result_backend = server.url
    app.conf.graph_redis_url = server.url
    app.set_current()
    times: dict[str, list[float]] = {name: [] for name in CASES}
    try:
        with celery_workers(server.url, 2):
            _timed(None, 50)  # warm up: imports, connections, the graph store
            for _ in range(repeats):  # interleaved, so drift hits every case alike
                for name, limit in CASES.items():
                    times[name].append(round(_timed(limit, runs), 3))
                    print(f"{name}: {times[name][-1]} s", file=sys.stderr, flush=True)
    finally:
        server.cleanup()
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["unlimited"]
    return {
        "runs": runs,
        "repeats": repeats,
        "processes": 2,
        "seconds": times,
        "median": medians,
        "overhead": {name: round(m / base - 1, 4) for name, m in medians.items()},
        # each repeat against the unlimited run of the same round (the rounds drift on a
        # shared machine; a round's cases ran back to back), then the median
        "paired": {
            name: round(statistics.median(c / u - 1 for c, u in zip(t, times["unlimited"])), 4)
            for name, t in times.items()
        },
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{results['runs']} runs of g_noop >> g_sleep, 2 worker processes, median of "
        f"{results['repeats']}",
        f"{'case':<12} {'seconds':>8} {'overhead':>9} {'paired':>8}",
    ]
    for name, median in results["median"].items():
        lines.append(
            f"{name:<12} {median:>8.2f} {results['overhead'][name]:>+9.1%} "
            f"{results['paired'][name]:>+8.1%}"
        )
    return "\n".join(lines)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = main(args.runs, args.repeats)
    (OUT / "limits.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    cli()
