"""Run every workload on celery-graph, Celery's canvas and dramatiq-workflow, side by side
on one private Redis with the same number of worker processes for every system.

Times run from submission until the final result is available to the client.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from bench import steps

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent
SIZE_QUEUE = "bench-size"  # a queue no worker consumes: messages are measured there
DRAMATIQ_MAX_FAN = 1000  # see main(): its messages grow with the graph
# each system's line in bench/results.png
PLOT_STYLES = (
    ("celery-graph", "C0o-"),
    ("celery canvas", "C1s-"),
    ("dramatiq-workflow", "C2^-"),
)


# -- processes ------------------------------------------------------------------------


def _env(url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, BENCH_REDIS_URL=url, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM (a warm shutdown), then SIGKILL after 30 s."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def celery_workers(
    url: str,
    processes: int,
    env_extra: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
):
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.apps",
        "worker",
        "-P",
        "prefork",
        "-c",
        str(processes),
        "-Q",
        "bench",
        "-l",
        "ERROR",
        "--without-mingle",
        "--without-gossip",
        "--without-heartbeat",
        "-n",
        f"bench-{uuid.uuid4().hex[:6]}@%h",
        *extra_args,
    ]
    proc = subprocess.Popen(
        cmd,
        env=_env(url, **(env_extra or {})),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        from bench.apps import app

        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Celery bench workers did not start")
        yield proc
    finally:
        _stop(proc)


@contextmanager
def dramatiq_workers(url: str, processes: int):
    cmd = [
        sys.executable,
        "-m",
        "dramatiq",
        "bench.dramatiq_app",
        "--processes",
        str(processes),
        "--threads",
        "1",
        "--queues",
        "bench",
    ]
    proc = subprocess.Popen(
        cmd, env=_env(url), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        from bench.dramatiq_app import d_done

        tag = uuid.uuid4().hex
        d_done.send(tag)  # a round trip proves the workers are up
        _wait_dramatiq([tag], 60)
        yield proc
    finally:
        _stop(proc)


def _wait_dramatiq(tags: list[str], timeout: float) -> None:
    from bench.dramatiq_app import _client

    deadline = time.monotonic() + timeout
    for tag in tags:
        # bounded slices: a client socket timeout must never cut a long BLPOP short
        while not _client.blpop([f"bench-dramatiq-done:{tag}"], timeout=2):
            if time.monotonic() > deadline:
                raise TimeoutError(f"dramatiq workflow {tag} did not finish in {timeout} s")


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_of(repeats: int, fn: Callable[[], Any]) -> float:
    return statistics.median(timed(fn) for _ in range(repeats))


# -- workloads: builders ----------------------------------------------------------------


def graph_fan(n: int, queue: str | None = None) -> Any:
    import dataclasses

    from bench.apps import g_noop
    from celery_graph import Parallel

    base = dataclasses.replace(g_noop, options=(("queue", queue),)) if queue else g_noop
    members = Parallel(tuple(base.bind(id=f"m{i}") for i in range(n)))
    return base.bind(id="start") >> members >> base.bind(id="join")


def graph_chain(n: int) -> Any:
    from bench.apps import g_noop
    from celery_graph import Sequence

    return Sequence(tuple(g_noop.bind(id=f"s{i}") for i in range(n)))


def graph_eight() -> Any:
    from bench.apps import g_noop

    t = {i: g_noop.bind(id=f"t{i}") for i in range(1, 9)}
    return t[1] >> ((t[2] >> t[5]) | t[3] | (t[4] >> (t[6] | t[7]))) >> t[8]


def canvas_fan(n: int, queue: str | None = None) -> Any:
    from celery import chain, chord

    from bench.apps import c_noop

    opts = {"queue": queue} if queue else {}
    return chain(
        c_noop.si().set(**opts),
        chord([c_noop.si().set(**opts) for _ in range(n)], c_noop.si().set(**opts)),
    )


def canvas_eight() -> Any:
    from celery import chain, group

    from bench.apps import c_noop

    s = c_noop.si
    return chain(s(), group(chain(s(), s()), s(), chain(s(), group(s(), s()))), s())


def dramatiq_fan(n: int, tag: str) -> Any:
    from dramatiq_workflow import Chain, Group, Workflow

    from bench.dramatiq_app import d_done, d_noop

    return Workflow(
        Chain(
            d_noop.message(),
            Group(*[d_noop.message() for _ in range(n)]),
            d_noop.message(),
            d_done.message(tag),
        )
    )


def dramatiq_chain(n: int, tag: str) -> Any:
    from dramatiq_workflow import Chain, Workflow

    from bench.dramatiq_app import d_done, d_noop

    return Workflow(Chain(*[d_noop.message() for _ in range(n)], d_done.message(tag)))


def dramatiq_eight(tag: str) -> Any:
    from dramatiq_workflow import Chain, Group, Workflow

    from bench.dramatiq_app import d_done, d_noop

    m = d_noop.message
    return Workflow(
        Chain(
            m(), Group(Chain(m(), m()), m(), Chain(m(), Group(m(), m()))), m(), d_done.message(tag)
        )
    )


# -- workloads: runs ------------------------------------------------------------------


def floor(n: int) -> float:
    """N plain Celery tasks with results; the client collects the results with batched
    MGETs of the result keys (cheaper than join_native, so a stricter floor)."""
    from bench.apps import app, c_noop

    backend = app.backend
    client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])

    def go() -> None:
        pending = [backend.get_key_for_task(c_noop.apply_async().id) for _ in range(n)]
        deadline = time.monotonic() + 600
        while pending:
            values = client.mget(pending[:1000])
            pending = [k for k, v in zip(pending[:1000], values) if v is None] + pending[1000:]
            if pending and values and all(v is None for v in values[:1]):
                time.sleep(0.005)  # nothing new yet: the bench client polls, gently
            if time.monotonic() > deadline:
                raise TimeoutError("floor results did not arrive")

    return timed(go)


def run_graph(flow: Any, timeout: float = 600) -> float:
    flow.compile()  # compiled once per flow, as for any flow a service submits repeatedly
    return timed(lambda: flow.apply_async().get(timeout=timeout))


def run_canvas(sig: Any, timeout: float = 600) -> float:
    return timed(lambda: sig.apply_async().get(timeout=timeout, disable_sync_subtasks=False))


def run_dramatiq(build: Callable[[str], Any], timeout: float = 600) -> float:
    tag = uuid.uuid4().hex

    def go() -> None:
        build(tag).run()
        _wait_dramatiq([tag], timeout)

    return timed(go)


def throughput_graph(runs: int) -> float:
    flow = graph_eight()
    flow.compile()

    def go() -> None:
        handles = [flow.apply_async() for _ in range(runs)]
        for h in handles:
            h.get(timeout=600)

    return timed(go)


def throughput_canvas(runs: int) -> float:
    def go() -> None:
        handles = [canvas_eight().apply_async() for _ in range(runs)]
        for h in handles:
            h.get(timeout=600, disable_sync_subtasks=False)

    return timed(go)


def throughput_dramatiq(runs: int) -> float:
    def go() -> None:
        tags = [uuid.uuid4().hex for _ in range(runs)]
        for tag in tags:
            dramatiq_eight(tag).run()
        _wait_dramatiq(tags, 600)

    return timed(go)


# -- message size -----------------------------------------------------------------------


def largest_in_queue(client: redis.Redis, queue: str) -> int:
    sizes = [len(m) for m in client.lrange(queue, 0, -1)]
    client.delete(queue)
    return max(sizes) if sizes else 0


def message_sizes(url: str, nodes: int) -> dict[str, int]:
    """Largest message for a fan-out graph of ``nodes`` nodes, in real broker bytes."""
    from bench.apps import app
    from celery_graph.dispatch import publish_nodes
    from celery_graph.state import state_for

    client = redis.Redis.from_url(url)
    n = nodes - 2
    # celery-graph: every node's message as the engine publishes it (root at submission,
    # members and the join by workers), sent to a queue nobody consumes
    spec = graph_fan(n, SIZE_QUEUE).compile()
    state_for(app).graphs.put(spec)
    publish_nodes(app, spec, uuid.uuid4().hex, list(spec.nodes))
    graph = largest_in_queue(client, SIZE_QUEUE)
    # Celery: chain(start, chord(members, join)); the first message carries the rest
    canvas_fan(n, SIZE_QUEUE).apply_async()
    canvas = largest_in_queue(client, SIZE_QUEUE)
    # dramatiq-workflow: measured as the broker encodes each message it enqueues (its
    # workers are stopped by now, so nothing consumes them)
    import dramatiq

    from bench.dramatiq_app import broker

    measured: list[int] = []

    class MeasureEnqueue(dramatiq.Middleware):
        def before_enqueue(self, broker_: Any, message: Any, delay: Any) -> None:
            measured.append(len(message.encode()))

    if n > DRAMATIQ_MAX_FAN:  # enqueuing them all would need ~19 GB (see main())
        return {"celery-graph": graph, "celery canvas": canvas, "dramatiq-workflow": None}
    mw = MeasureEnqueue()
    broker.middleware.insert(0, mw)
    try:
        dramatiq_fan(n, "size").run()
    finally:
        broker.middleware.remove(mw)
    dramatiq_client = redis.Redis.from_url(url)
    for key in dramatiq_client.scan_iter("bench-dramatiq*", count=1000):
        if not key.startswith(b"bench-dramatiq-done"):
            dramatiq_client.delete(key)  # the measured messages: nobody will consume them
    return {
        "celery-graph": graph,
        "celery canvas": canvas,
        "dramatiq-workflow": max(measured) if measured else 0,
    }


# -- Redis after the runs -------------------------------------------------------------------


def keys_left(url: str, processes: int, runs: int) -> dict[str, Any]:
    """Run with short TTLs under a fresh prefix; count its keys once they should expire,
    and the memory each in-flight run holds."""
    prefix = f"bench-ttl-{uuid.uuid4().hex[:6]}"
    extra = {
        "BENCH_PREFIX": prefix,
        "BENCH_RESULT_TTL": "2",
        "BENCH_STORE_TTL": "4",
        "BENCH_RUN_TTL": "6",
    }
    os.environ.update(extra)
    from bench.apps import app

    app.conf.update(graph_key_prefix=prefix, graph_result_ttl=2, graph_store_ttl=4, graph_run_ttl=6)
    client = redis.Redis.from_url(url)
    try:
        with celery_workers(url, processes, extra):
            flow = graph_eight()
            handles = [flow.apply_async() for _ in range(runs)]
            for h in handles:
                h.get(timeout=120)
        right_after = sum(1 for _ in client.scan_iter(f"{prefix}:*", count=1000))
        time.sleep(7)
        left = sum(1 for _ in client.scan_iter(f"{prefix}:*", count=1000))
        # memory of in-flight runs: submitted, nothing consuming the queue
        before = client.info("memory")["used_memory"]
        inflight = [graph_eight().apply_async() for _ in range(runs)]
        per_run = (client.info("memory")["used_memory"] - before) / runs
        for h in inflight:
            h.cancel()
        client.delete("bench")
    finally:
        for k in extra:
            os.environ.pop(k, None)
        app.conf.update(
            graph_key_prefix="bench",
            graph_result_ttl=3600,
            graph_store_ttl=3600,
            graph_run_ttl=7200,
        )
    return {
        "keys_right_after": right_after,
        "keys_left_after_expiry": left,
        "bytes_per_inflight_run": round(per_run),
    }


# -- the whole suite ----------------------------------------------------------------------


SECTIONS = ("canvas", "dramatiq", "messages", "map", "scale", "keys", "io", "steps")


def sizes(quick: bool) -> tuple[list[int], int]:
    """The fan-out sizes and the chain length the canvas section measures."""
    return ([1000] if quick else [1000, 10_000]), 200


def main(
    quick: bool = False, processes: int = 2, only: frozenset[str] | None = None
) -> dict[str, Any]:
    """Every section of the suite, or the ones named in ``only`` (see SECTIONS)."""
    from celery_graph.testing import PrivateRedis

    def wanted(section: str) -> bool:
        return only is None or section in only

    repeats = 1 if quick else 3
    fan_sizes, chain_len = sizes(quick)
    eight_runs = 50 if quick else 200
    server = PrivateRedis().start()
    url = server.url
    os.environ["BENCH_REDIS_URL"] = url
    sys.path.insert(0, str(ROOT))
    results: dict[str, Any] = {
        "quick": quick,
        "processes": processes,
        "repeats": repeats,
        "redis": url.split("@")[-1],
        "workloads": {},
    }
    w = results["workloads"]
    try:
        import bench.apps  # noqa: F401  (the client side uses the same app)

        if wanted("canvas"):
            with celery_workers(url, processes):
                _canvas_section(w, fan_sizes, chain_len, eight_runs, repeats)
        if wanted("dramatiq"):
            with dramatiq_workers(url, processes):
                _dramatiq_section(w, fan_sizes, chain_len, eight_runs, repeats)
        if wanted("messages"):
            results["message_bytes"] = {
                str(size): message_sizes(url, size)
                for size in ([3, 100, 1000] if quick else [3, 100, 1000, 10_000])
            }
        if wanted("map"):
            results["map"] = chunked_map(
                url, processes, 1000 if quick else MAP_N, MAP_CHUNK, repeats
            )
        if wanted("scale") and not quick:
            results["scale"] = big_fan(url, processes, SCALE_N)
        if wanted("keys"):
            results["redis_after"] = keys_left(url, processes, eight_runs)
        if wanted("io"):
            results["io_scaling"] = io_scaling(url, [1, 2, 4], 60 if quick else 200)
        if wanted("steps"):  # sequential latency against Celery's chain (bench/steps.py)
            results["steps"] = steps.section(url, quick, processes, celery_workers)
    except BaseException:
        (OUT / "results-partial.json").write_text(json.dumps(results, indent=2) + "\n")
        raise
    finally:
        server.cleanup()
    if only is None:
        results["targets"] = targets(results, fan_sizes, chain_len)
    return results


def _canvas_section(
    w: dict[str, Any], fan_sizes: list[int], chain_len: int, eight_runs: int, repeats: int
) -> None:
    for n in fan_sizes:
        w[f"floor N={n}"] = {"celery": statistics.median(floor(n) for _ in range(repeats))}
        flow = graph_fan(n)
        w[f"fan-out/fan-in N={n}"] = {
            "celery-graph": median_of(repeats, lambda f=flow: run_graph(f)),
            "celery canvas": median_of(repeats, lambda n=n: run_canvas(canvas_fan(n))),
        }
        _report(w, f"fan-out/fan-in N={n}", f"floor N={n}")
    flow = graph_chain(chain_len)
    w[f"chain of {chain_len}"] = {
        "celery-graph": median_of(repeats, lambda: run_graph(flow)),
        "celery canvas": median_of(repeats, lambda: run_canvas(_canvas_chain(chain_len))),
    }
    w[f"{eight_runs} concurrent 8-task runs"] = {
        "celery-graph": median_of(repeats, lambda: throughput_graph(eight_runs)),
        "celery canvas": median_of(repeats, lambda: throughput_canvas(eight_runs)),
    }


def _dramatiq_section(
    w: dict[str, Any], fan_sizes: list[int], chain_len: int, eight_runs: int, repeats: int
) -> None:
    # dramatiq-workflow puts the rest of the workflow into every group member's
    # message: ~190 KB each at N=1,000, so ~1.9 MB x 10,000 messages (~19 GB of
    # Redis) at N=10,000, more than this machine holds; it runs up to N=1,000.
    for n in [n for n in fan_sizes if n <= DRAMATIQ_MAX_FAN]:
        w.setdefault(f"fan-out/fan-in N={n}", {})["dramatiq-workflow"] = median_of(
            repeats, lambda n=n: run_dramatiq(lambda tag: dramatiq_fan(n, tag))
        )
    w.setdefault(f"chain of {chain_len}", {})["dramatiq-workflow"] = median_of(
        repeats, lambda: run_dramatiq(lambda tag: dramatiq_chain(chain_len, tag))
    )
    w.setdefault(f"{eight_runs} concurrent 8-task runs", {})["dramatiq-workflow"] = median_of(
        repeats, lambda: throughput_dramatiq(eight_runs)
    )


SCALE_N = 100_000
MAP_N = 10_000
MAP_CHUNK = 100


def chunked_map(url: str, processes: int, n: int, chunk: int, repeats: int) -> dict[str, Any]:
    """A map over ``n`` items in chunks of ``chunk`` against ``n`` plain tasks (the floor)
    and against Celery's own ``chunks`` on the same work (result of the whole group)."""
    from bench.apps import c_item, g_item, g_items, g_sum

    flow = g_items.bind(n=n) >> g_item.map("g_items", chunk=chunk) >> g_sum
    with celery_workers(url, processes):
        floor_s = statistics.median(floor(n) for _ in range(repeats))
        graph_s = median_of(repeats, lambda: flow.apply_async().get(timeout=600))
        celery_s = median_of(
            repeats,
            lambda: (
                c_item.chunks([(i,) for i in range(n)], chunk)
                .group()
                .apply_async()
                .get(timeout=600)
            ),
        )
    return {
        "items": n,
        "chunk": chunk,
        "floor": round(floor_s, 2),
        "celery-graph": round(graph_s, 2),
        "celery chunks": round(celery_s, 2),
        "ratio to floor": round(graph_s / floor_s, 2),
    }


def big_fan(url: str, processes: int, n: int) -> dict[str, Any]:
    """A fan-out/fan-in of ``n`` nodes against ``n`` plain tasks, with the slowest Redis
    commands the graph run caused (SLOWLOG, everything over 5 ms)."""
    client = redis.Redis.from_url(url)
    with celery_workers(url, processes):
        floor_s = floor(n)
        flow = graph_fan(n)
        compiled = timed(flow.compile)
        client.config_set("slowlog-log-slower-than", 5000)
        client.slowlog_reset()
        graph_s = run_graph(flow, timeout=3600)
        slow = client.slowlog_get(20)
        client.config_set("slowlog-log-slower-than", 10000)
    worst = max(slow, key=lambda e: e["duration"], default=None)
    return {
        "nodes": n,
        "floor": round(floor_s, 1),
        "celery-graph": round(graph_s, 1),
        "ratio": round(graph_s / floor_s, 2),
        "compile seconds": round(compiled, 1),
        "slowest Redis call ms": round(worst["duration"] / 1000, 1) if worst else "< 5",
        "slowest Redis call": _command(worst) if worst else "",
        "calls over 5 ms": len(slow),
    }


def _command(entry: dict[str, Any]) -> str:
    words = [
        w.decode(errors="replace") if isinstance(w, bytes) else str(w)
        for w in (
            entry["command"].split() if isinstance(entry["command"], bytes) else entry["command"]
        )
    ]
    return " ".join(words[:3])


def _canvas_chain(n: int) -> Any:
    from celery import chain

    from bench.apps import c_noop

    return chain(*[c_noop.si() for _ in range(n)])


def _report(w: dict[str, Any], fan: str, floor_key: str) -> None:
    w[fan]["floor"] = w[floor_key]["celery"]


def io_scaling(url: str, process_counts: list[int], tasks: int) -> dict[str, Any]:
    """Tasks that sleep 50 ms, in one fan-out graph and in one chord, per worker count."""
    from celery import chord

    from bench.apps import c_sleep, g_noop, g_sleep
    from celery_graph import Parallel

    flow = (
        g_noop.bind(id="start")
        >> Parallel(tuple(g_sleep.bind(id=f"s{i}") for i in range(tasks)))
        >> g_noop.bind(id="join")
    )
    out: dict[str, Any] = {"tasks": tasks}
    for procs in process_counts:
        with celery_workers(url, procs, {"BENCH_PREFETCH": "1"}):
            g = run_graph(flow)
            c = run_canvas(chord([c_sleep.si() for _ in range(tasks)], c_sleep.si()))
        out[f"{procs} processes"] = {
            "celery-graph tasks/s": round(tasks / g, 1),
            "celery canvas tasks/s": round(tasks / c, 1),
        }
    return out


def targets(results: dict[str, Any], fan_sizes: list[int], chain_len: int) -> dict[str, Any]:
    w = results["workloads"]
    big = fan_sizes[-1]
    fan_big = w[f"fan-out/fan-in N={big}"]
    out: dict[str, Any] = {
        f"fan-out N={big} / floor (<= 1.25)": round(fan_big["celery-graph"] / fan_big["floor"], 2),
        f"canvas fan-out N={big} / floor": round(fan_big["celery canvas"] / fan_big["floor"], 2),
        "chain per step / Celery chain per step (<= 1.2)": round(
            w[f"chain of {chain_len}"]["celery-graph"]
            / w[f"chain of {chain_len}"]["celery canvas"],
            2,
        ),
        "largest celery-graph message, bytes (< 2048, constant)": max(
            v["celery-graph"] for v in results["message_bytes"].values()
        ),
        "keys left after expiry (0)": results["redis_after"]["keys_left_after_expiry"],
    }
    if len(fan_sizes) > 1:
        small = w[f"fan-out/fan-in N={fan_sizes[0]}"]["celery-graph"]
        key = f"fan-out N={big} / N={fan_sizes[0]} (<= 11)"
        out[key] = round(fan_big["celery-graph"] / small, 2)
    if "steps" in results:
        out.update(steps.targets(results["steps"]))
    return out


# -- output -------------------------------------------------------------------------------


def table(results: dict[str, Any]) -> str:
    systems = ["floor", "celery-graph", "celery canvas", "dramatiq-workflow"]
    lines = ["| workload | " + " | ".join(systems) + " |", "|---|" + "---|" * len(systems)]
    for name, row in results["workloads"].items():
        if name.startswith("floor"):
            continue
        cells = [f"{row[s]:.2f} s" if s in row else "n/a" for s in systems]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "| message bytes, graph of N nodes | celery-graph | celery canvas | dramatiq-workflow |"
    )
    lines.append("|---|---|---|---|")
    for size, row in results["message_bytes"].items():
        dq = row["dramatiq-workflow"]
        lines.append(
            f"| {size} | {row['celery-graph']} | {row['celery canvas']} | "
            f"{dq if dq is not None else 'n/a (~19 GB to enqueue)'} |"
        )
    lines.append("")
    io = results["io_scaling"]
    lines.append(
        f"| {io['tasks']} tasks sleeping 50 ms | celery-graph tasks/s | celery canvas tasks/s |"
    )
    lines.append("|---|---|---|")
    for k, v in io.items():
        if k != "tasks":
            lines.append(f"| {k} | {v['celery-graph tasks/s']} | {v['celery canvas tasks/s']} |")
    lines.append("")
    if "map" in results:
        mp = results["map"]
        lines.append(
            f"| map over {mp['items']:,} items, chunk={mp['chunk']} | floor "
            "| celery-graph | celery `chunks` | celery-graph / floor |"
        )
        lines.append("|---|---|---|---|---|")
        lines.append(
            f"| | {mp['floor']:.2f} s | {mp['celery-graph']:.2f} s | "
            f"{mp['celery chunks']:.2f} s | {mp['ratio to floor']} |"
        )
        lines.append("")
    if "scale" in results:
        sc = results["scale"]
        lines.append(
            f"| {sc['nodes']:,}-node fan-out/fan-in | floor | celery-graph | ratio "
            "| slowest Redis call | calls over 5 ms |"
        )
        lines.append("|---|---|---|---|---|---|")
        lines.append(
            f"| | {sc['floor']} s | {sc['celery-graph']} s | {sc['ratio']} | "
            f"{sc['slowest Redis call ms']} ms ({sc['slowest Redis call']}) | "
            f"{sc['calls over 5 ms']} |"
        )
        lines.append("")
    ra = results["redis_after"]
    lines.append(
        f"Redis after the runs: {ra['keys_right_after']} keys right after, "
        f"{ra['keys_left_after_expiry']} once results expired; "
        f"{ra['bytes_per_inflight_run']} bytes per in-flight 8-task run."
    )
    lines.append("")
    if "steps" in results:
        lines.append(steps.table(results["steps"]))
        lines.append("")
    lines.append("| target | measured |")
    lines.append("|---|---|")
    for k, v in results["targets"].items():
        lines.append(f"| {k} | {v} |")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    fans = {
        int(k.split("=")[1]): v for k, v in results["workloads"].items() if k.startswith("fan-out")
    }
    sizes = sorted(fans)
    for system, style in (("floor", "k--"), *PLOT_STYLES):
        ys = [fans[n].get(system) for n in sizes]
        if all(y is not None for y in ys):
            ax1.plot(sizes, ys, style, label=system)
    ax1.set(
        xscale="log",
        yscale="log",
        xlabel="parallel tasks N in start >> (N) >> join",
        ylabel="seconds, submit to result",
        title="Fan-out / fan-in",
    )
    ax1.legend()
    msizes = sorted(int(k) for k in results["message_bytes"])
    for system, style in PLOT_STYLES:
        points = [(n, results["message_bytes"][str(n)][system]) for n in msizes]
        points = [(n, v) for n, v in points if v is not None]
        ax2.plot([p[0] for p in points], [p[1] for p in points], style, label=system)
    ax2.set(
        xscale="log",
        yscale="log",
        xlabel="nodes in the graph",
        ylabel="largest message, bytes",
        title="Message size",
    )
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
