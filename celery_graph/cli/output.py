"""How the commands print: progress lines, the status of a run (every node, or a summary
of a large run), the runs and workers tables, and the JSON documents of ``--json``.

Functions here take values and a stream; they never read Redis or parse options.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import IO, Any

from ..model import GraphSpec, RunStatus
from .fmt import duration, span, table, timestamp

SUMMARY_OVER = 50  # `status` summarises a run with more nodes than this (unless --all)
SHOWN = 20  # at most this many rows per section of a summary
SLOWEST = 10


def emit_json(value: Any, out: IO[str]) -> None:
    """One JSON document on ``out``."""
    out.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def dump(value: Any) -> str:
    """A result for people: one line of JSON when short, indented when long."""
    try:
        line = json.dumps(value, sort_keys=True, default=str)
        if len(line) <= 100:
            return line
        return json.dumps(value, indent=2, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(value)


# -- progress ------------------------------------------------------------------------


def progress_line(status: RunStatus, width: int = 30) -> str:
    counts = status.counts()
    total = len(status.nodes) or 1
    skipped = counts.get("skipped", 0)  # a branch not taken counts as done
    done = counts.get("succeeded", 0) + skipped
    failed = counts.get("failed", 0)
    filled = int(width * (done + failed) / total)
    bar = "#" * filled + "-" * (width - filled)
    running = []
    for nid, n in status.nodes.items():
        if n.state == "running":
            running.append(nid)
            if len(running) > 4:
                break
    line = f"[{bar}] {done}/{total} nodes done"
    if skipped:
        line += f" ({skipped} skipped)"
    if failed:
        line += f", {failed} failed"
    if running:
        line += "  running: " + ", ".join(running[:4]) + (" ..." if len(running) > 4 else "")
    return line


# -- status --------------------------------------------------------------------------


def print_status(status: RunStatus, out: IO[str], *, every_node: bool = False) -> None:
    """The run's header, then every node (small runs, or ``every_node``) or a summary:
    counts by state, failed nodes with their errors, waiting nodes, the slowest ones. A
    ``status`` that is a summary (RunStatus.summarised) shows the header and the counts."""
    out.write(f"run       {status.run_id}\n")
    out.write(f"state     {state_text(status.state, status.position)}\n")
    if status.flow:
        out.write(f"flow      {status.flow}\n")
    if status.parent:
        out.write(f"parent    {status.parent} (node {status.parent_node})\n")
    for nid, child in status.children.items():
        out.write(f"child     {child} (node {nid})\n")
    out.write(f"graph     {status.graph_id}\n")
    out.write(f"started   {timestamp(status.created)}\n")
    out.write(f"finished  {timestamp(status.finished)}\n")
    out.write(f"duration  {span(status.created, status.finished)}\n")
    counts = status.counts()
    out.write("nodes     " + ", ".join(f"{counts[k]} {k}" for k in sorted(counts)) + "\n\n")
    if status.summary:
        out.write(
            f"{status.total} nodes, counted by state as the graph state keeps them; "
            "--all lists every node\n"
        )
    elif every_node or len(status.nodes) <= SUMMARY_OVER:
        _all_nodes(status, out)
    else:
        _summary(status, out)
    if status.steps:
        _steps(status, out)
    if every_node:
        _attempts(status, out)
    if status.error:
        err = status.error
        where = f"node {err.get('node')!r}: " if err.get("node") else ""
        out.write(f"\nerror: {where}{err.get('type', 'Error')}: {err.get('message', '')}\n")


def _all_nodes(status: RunStatus, out: IO[str]) -> None:
    rows = [["NODE", "STATE", "ATTEMPTS", "WORKER", "DURATION"]]
    for nid, n in status.nodes.items():
        rows.append(
            [
                nid,
                n.state,
                str(n.attempts),
                n.worker or "-",
                span(n.started, n.finished) if n.started else "-",
            ]
        )
    table(rows, out)
    stalled = status.stalled()
    if stalled:
        out.write("\nwaiting:\n")
        table([["NODE", "WHY"], *([nid, why] for nid, why in stalled.items())], out)


def _steps(status: RunStatus, out: IO[str]) -> None:
    """The handlers and compensations that followed (or follow) the end of the graph."""
    if status.outcome and not status.done:
        out.write(f"\nfinishing: the run ends as {status.outcome} after these steps\n")
    rows = [["STEP", "ROLE", "STATE", "ATTEMPTS", "ERROR"]]
    for sid, n in status.steps.items():
        err = n.error or {}
        error = f"{err.get('type', 'Error')}: {err.get('message', '')}" if n.error else "-"
        rows.append([sid, status.roles.get(sid, ""), n.state, str(n.attempts), error])
    out.write("\n")
    table(rows, out)


def _attempts(status: RunStatus, out: IO[str]) -> None:
    """Every attempt at every node that ran, oldest first, with what ended it."""
    rows = [
        ["NODE", "ATTEMPT", "OUTCOME", "WORKER", "QUEUED (UTC)", "STARTED", "DURATION", "ERROR"]
    ]
    for nid, n in status.nodes.items():
        for i, a in enumerate(n.history, 1):
            err = a.get("error")
            rows.append(
                [
                    nid,
                    str(i),
                    a["outcome"],
                    a.get("worker") or "-",
                    timestamp(a.get("queued")),
                    timestamp(a.get("started")),
                    span(a["started"], a.get("finished")) if a.get("started") else "-",
                    f"{err['type']}: {err['message']}"[:80] if err else "",
                ]
            )
    if len(rows) > 1:
        out.write("\nattempts:\n")
        table(rows, out)


def _more(out: IO[str], total: int, shown: int) -> None:
    if total > shown:
        out.write(f"... and {total - shown} more (--all lists every node)\n")


def _summary(status: RunStatus, out: IO[str]) -> None:
    # One pass over the nodes; only the rows shown are formatted.
    now = status.now if status.now is not None else time.time()
    failed: list[tuple[str, Any]] = []
    n_failed = 0
    waiting: list[tuple[str, str]] = []
    n_waiting = 0
    timed: list[tuple[float, str]] = []
    for nid, n in status.nodes.items():
        if n.state == "failed" or (n.error and n.state != "succeeded"):
            n_failed += 1
            if len(failed) < SHOWN:
                failed.append((nid, n))
        if not status.done and n.state in ("queued", "running", "retrying"):
            why = n.waiting(now)
            if why:
                n_waiting += 1
                if len(waiting) < SHOWN:
                    waiting.append((nid, why))
        if n.started is not None:
            timed.append(((n.finished if n.finished is not None else now) - n.started, nid))
    if failed:
        out.write(f"failed ({n_failed}):\n")
        rows = [["NODE", "ATTEMPTS", "WORKER", "ERROR"]]
        run_error = status.error or {}
        for nid, n in failed:
            # the run's error names the node that failed it; members of a tolerant group
            # carry their own
            err = n.error or (run_error if run_error.get("node") == nid else {})
            message = f"{err.get('type', 'Error')}: {err.get('message', '')}" if err else "-"
            rows.append([nid, str(n.attempts), n.worker or "-", message.splitlines()[0]])
        table(rows, out)
        _more(out, n_failed, len(failed))
        out.write("\n")
    if waiting:
        out.write("waiting:\n")
        table([["NODE", "WHY"], *([nid, why] for nid, why in waiting)], out)
        _more(out, n_waiting, len(waiting))
        out.write("\n")
    slowest = heapq.nlargest(SLOWEST, timed)
    if slowest:
        out.write("slowest:\n")
        rows = [["NODE", "STATE", "WORKER", "DURATION"]]
        for seconds, nid in slowest:
            n = status.nodes[nid]
            shown = duration(max(0.0, seconds)) + ("" if n.finished is not None else "+")
            rows.append([nid, n.state, n.worker or "-", shown])
        table(rows, out)
        out.write("\n")
    out.write(f"{len(status.nodes)} nodes, summarised; --all lists every node\n")


# -- runs, workers, graphs, sweeps ---------------------------------------------------


def state_text(state: str, position: int | None) -> str:
    """A run's state, with its place in line while it waits for a concurrency slot."""
    return f"{state} (#{position} in line)" if state == "queued" and position else state


def print_runs(rows: Iterable[Mapping[str, Any]], out: IO[str]) -> None:
    lines = [["RUN ID", "STATE", "FLOW", "STARTED (UTC)", "DURATION", "NODES DONE"]]
    for r in rows:
        lines.append(
            [
                r["run_id"],
                state_text(r["state"], r.get("position")),
                r.get("flow") or "-",
                timestamp(r["created"]),
                span(r["created"], r["finished"]),
                f"{r['done']}/{r['nodes']}",
            ]
        )
    table(lines, out)


WORKER_COLUMNS = (
    "WORKER",
    "STATE",
    "PID",
    "QUEUES",
    "HEARTBEAT",
    "UPTIME",
    "PROCESSED",
    "OK",
    "FAILED",
    "MEAN",
    "IN-FLIGHT",
)


def print_workers(workers: Iterable[Any], out: IO[str]) -> None:
    """The live workers (``WorkerInfo``) as a table::

        WORKER     STATE    PID   QUEUES  HEARTBEAT  UPTIME  PROCESSED  OK   FAILED  MEAN
        cpu@host1  running  4121  celery  1.20s ago  5m03s   120        119  1       0.041s

    (plus an IN-FLIGHT column: tasks the worker held at its last heartbeat)
    """
    rows: list[tuple[str, ...]] = [WORKER_COLUMNS]
    for w in workers:
        m = w.metrics
        mean = w.mean_runtime
        rows.append(
            (
                w.hostname,
                w.state,
                str(w.pid),
                ",".join(w.queues) or "-",
                f"{duration(w.heartbeat_age)} ago",
                duration(w.uptime),
                str(m.get("processed", 0)),
                str(m.get("succeeded", 0)),
                str(m.get("failed", 0)),
                f"{mean:.3f}s" if mean is not None else "-",
                str(m.get("in_flight", 0)),
            )
        )
    table(rows, out)


def worker_data(worker: Any) -> dict[str, Any]:
    data = asdict(worker)
    data["heartbeat_age"] = worker.heartbeat_age
    data["uptime"] = worker.uptime
    return data


def spec_data(
    spec: GraphSpec, states: Mapping[str, str] | None, title: str | None
) -> dict[str, Any]:
    """The document of ``show --json``: nodes in topological order, edges, states."""
    nodes = []
    for nid in spec.order:
        node = spec.nodes[nid]
        entry: dict[str, Any] = {"id": nid, "task": node.task, "preds": list(node.preds)}
        if states is not None:
            entry["state"] = states.get(nid, "pending")
        nodes.append(entry)
    return {
        "title": title,
        "graph_id": spec.graph_id,
        "roots": list(spec.roots),
        "sinks": list(spec.sinks),
        "joins": list(spec.joins),
        "nodes": nodes,
        "edges": [[p, nid] for nid in spec.order for p in spec.nodes[nid].preds],
    }


def print_sweep(report: Any, out: IO[str]) -> None:
    if report.locked_out:
        out.write("another process is sweeping; nothing done\n")
        return
    out.write(
        f"looked at {report.runs} run(s): sent again {len(report.redelivered)}"
        + "".join(f"\n  sent again {r}" for r in report.redelivered)
        + f"\n  still queued (busy queue, or held by a live worker): {report.extended}, skips "
        f"passed on: {report.skips}, maps completed: {report.maps}, runs failed: "
        f"{len(report.failed)}, canvases continued: {len(report.continued)}\n"
    )
    if report.hold is not None:
        out.write(
            f"  after an outage (no sweep for over half a running lease), running leases "
            f"that ran out are extended for now, not reclaimed: {report.held} this sweep\n"
        )
