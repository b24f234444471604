"""Where a sequential step's time goes in the worker: one ``celery worker -P solo`` under
cProfile runs ``RUNS`` 50-step flows; the profile is grouped into the parts of a step
(message decode, spec load, begin, the lease keeper, the call, complete, or
complete_begin for an eager successor, publish, result backend, metrics, the consumer
loop) and printed as milliseconds per step, then the functions that took the most time
of their own.

    python -m bench.profile_step [RUNS] [--off | --chain]   (writes bench/profile_step.prof)

``--off``: eager successors off (the no-op task declared ``@task(graph_eager=False)``, so
every step is a published message, as ``make bench-steps``' "eager off"); ``--chain``:
Celery's ``chain`` of the same length, for what a plain Celery step costs on the same
worker.
"""

from __future__ import annotations

import os
import pstats
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "profile_step.prof"
STEPS = 50

# part of a step -> functions whose cumulative time is that part (file suffix, name)
PARTS = {
    "whole task (trace_task)": [("celery/app/trace.py", "trace_task")],
    "message decode (kombu)": [("kombu/message.py", "decode"), ("kombu/message.py", "_decode")],
    "NodeMessage.parse": [("celery_graph/protocol.py", "parse")],
    "spec load (GraphStore.load)": [("celery_graph/state/graphs.py", "load")],
    "begin.lua": [("celery_graph/state/scripts.py", "begin")],
    "lease keeper (hold)": [("celery_graph/executor/leases.py", "hold")],
    "the node's function": [("bench/apps.py", "g_noop"), ("bench/apps.py", "g_noop_published")],
    "complete.lua": [("celery_graph/state/scripts.py", "complete")],
    "complete_begin.lua": [("celery_graph/state/scripts.py", "complete_begin")],
    "publish successors": [("celery_graph/dispatch.py", "publish_nodes")],
    "metrics (task_postrun)": [("celery_graph/worker/metrics.py", "_on_postrun")],
    "result backend (store_result)": [
        ("celery/backends/base.py", "store_result"),
        ("celery_graph/engine/results.py", "store_success"),
    ],
    "task_prerun/postrun signals": [("celery/utils/dispatch/signal.py", "send")],
    "ack": [("kombu/message.py", "ack")],
}


def main(runs: int = 40, mode: str = "") -> None:
    from celery_graph.testing import PrivateRedis

    server = PrivateRedis().start()
    env = dict(os.environ, BENCH_REDIS_URL=server.url, PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "cProfile",
        "-o",
        str(OUT),
        "-m",
        "celery",
        "-A",
        "bench.apps",
        "worker",
        "-P",
        "solo",
        "-Q",
        "bench",
        "-l",
        "ERROR",
        "--without-mingle",
        "--without-gossip",
        "--without-heartbeat",
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    try:
        os.environ["BENCH_REDIS_URL"] = server.url
        sys.path.insert(0, str(ROOT))
        from bench.apps import app
        from bench.steps import _chain, _graph

        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=0.5):
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not start")
        if mode == "--chain":
            for _ in range(runs):
                _chain(STEPS).apply_async().get(timeout=60, disable_sync_subtasks=False)
        else:
            flow = _graph(STEPS, eager=mode != "--off")
            flow.compile()
            for _ in range(runs):
                flow.apply_async().get(timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        server.cleanup()
    report(runs * STEPS)


def report(steps: int, top: int = 40) -> None:
    stats = pstats.Stats(str(OUT))
    raw = stats.stats  # type: ignore[attr-defined]
    print(f"cumulative ms per step over {steps} steps (parts overlap: nested)")
    for part, funcs in PARTS.items():
        total = 0.0
        for (path, _line, name), (_cc, _nc, _tt, ct, _callers) in raw.items():
            if any(path.endswith(suffix) and name == fn for suffix, fn in funcs):
                total += ct
        print(f"  {part:34s} {total / steps * 1000:7.3f}")
    print(f"own time, ms per step, the {top} largest (calls per step)")
    ranked = sorted(raw.items(), key=lambda kv: -kv[1][2])[:top]
    for (path, line, name), (_cc, nc, tt, _ct, _callers) in ranked:
        where = "/".join(Path(path).parts[-2:])
        print(f"  {tt / steps * 1000:7.3f} {nc / steps:6.1f}  {where}:{line} {name}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    flags = [a for a in sys.argv[1:] if a.startswith("--")]
    main(int(args[0]) if args else 40, flags[0] if flags else "")
