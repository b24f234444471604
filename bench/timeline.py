"""Where a published step's time goes, on the worker's own clock: ``RUNS`` flows of
``STEPS`` no-op steps with eager successors off (every step a broker message) and as many
Celery chains of the same length, taking turns run by run, on one private Redis and one
``celery worker -P prefork -c 2`` loaded with ``bench/timeline_probe.py``. Prints the
median of each part of a step, for each system, in milliseconds.

    python -m bench.timeline [RUNS] [STEPS]      (default 150 runs of 3 steps)

The parts: the submission to the first message received; per step, received -> the task
starts (Celery hands it to a pool process), the start -> begin.lua sent, its round trip,
its answer -> complete.lua sent, complete.lua sent -> the successor's message handed to
the broker (celery-graph), the start -> the next message handed to the broker (the
chain), and the start -> the next message received by the worker; the last step's start
-> the client has the result.
"""

from __future__ import annotations

import bisect
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

Event = tuple[float, str, Any, Any, str]  # time, event, task id, root id, process id
SYSTEMS = ("celery-graph, eager off", "celery chain")


def measure(runs: int, steps: int) -> tuple[list[tuple[str, float, float]], list[Event]]:
    """Run the flows; the client's (system, start, end) of each run and every event the
    worker's processes noted."""
    from bench import steps as bench_steps
    from bench.run import ROOT, celery_workers
    from celery_graph.testing import PrivateRedis

    server = PrivateRedis().start()
    os.environ["BENCH_REDIS_URL"] = server.url
    sys.path.insert(0, str(ROOT))
    client: list[tuple[str, float, float]] = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            probe = ("-I", "bench.timeline_probe")
            env = {"BENCH_TIMELINE_DIR": folder}
            with celery_workers(server.url, 2, env_extra=env, extra_args=probe):
                runners = bench_steps._runners(steps)
                for name in SYSTEMS:  # warm: connections, the stored graph, imports
                    for _ in range(5):
                        runners[name]()
                for i in range(runs):
                    for name in SYSTEMS if i % 2 else SYSTEMS[::-1]:
                        start = time.perf_counter()
                        runners[name]()
                        client.append((name, start, time.perf_counter()))
            events: list[Event] = []
            for path in Path(folder).glob("*.json"):
                events += [(*e, path.stem) for e in json.loads(path.read_text())]
    finally:
        server.cleanup()
    return client, sorted(events)


def parts(
    client: list[tuple[str, float, float]], events: list[Event], steps: int
) -> dict[str, dict[str, list[float]]]:
    """Each system's parts (milliseconds), one value per run that the events cover."""
    by_root: dict[str, list[Event]] = defaultdict(list)
    by_process: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        by_process[e[4]].append(e)
        if e[3]:
            by_root[e[3]].append(e)
    firsts = sorted(
        (min(e[0] for e in evs if e[1] == "received"), root)
        for root, evs in by_root.items()
        if any(e[1] == "received" for e in evs)
    )
    starts = [t for t, _ in firsts]
    out: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in SYSTEMS}
    for name, began, ended in client:
        i = bisect.bisect_left(starts, began)
        if i == len(starts) or starts[i] > ended:
            continue
        run = by_root[firsts[i][1]]
        of = {kind: sorted(e for e in run if e[1] == kind) for kind in ("received", "prerun")}
        if len(of["received"]) != steps or len(of["prerun"]) != steps:
            continue
        published = sorted(e[0] for e in run if e[1] == "published")
        row = out[name]

        def add(part: str, seconds: float, row: Any = row) -> None:
            row[part].append(seconds * 1000)

        add("submit -> first received", of["received"][0][0] - began)
        for s in range(steps):
            received, start = of["received"][s], of["prerun"][s]
            add(f"{s}: received -> start", start[0] - received[0])
            if s + 1 < steps:
                add(f"{s}: start -> next received", of["received"][s + 1][0] - start[0])
                after = [t for t in published if t > start[0]]
                if after:
                    add(f"{s}: start -> next handed to the broker", after[0] - start[0])
            calls = _calls(by_process[start[4]], start[0])
            if "begin sent" in calls and "complete sent" in calls:
                add(f"{s}: start -> begin.lua sent", calls["begin sent"] - start[0])
                add(f"{s}: begin.lua round trip", calls["begin answered"] - calls["begin sent"])
                add(
                    f"{s}: begin.lua answered -> complete.lua sent",
                    calls["complete sent"] - calls["begin answered"],
                )
        add("last start -> client has the result", ended - of["prerun"][-1][0])
    return out


def _calls(process: list[Event], start: float) -> dict[str, float]:
    """The first of each script call event of ``process`` after ``start``."""
    out: dict[str, float] = {}
    i = bisect.bisect_left(process, (start,))
    for e in process[i:]:
        if e[1] == "postrun":
            break
        out.setdefault(e[1], e[0])
    return out


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 150
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    client, events = measure(runs, steps)
    for name, row in parts(client, events, steps).items():
        print(f"{name} ({len(row['submit -> first received'])} runs matched of {runs})")
        for part, values in sorted(row.items()):
            print(f"  {part:46s} p50 {statistics.median(values):7.3f} ms")


if __name__ == "__main__":
    main()
