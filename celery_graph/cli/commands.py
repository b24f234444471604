"""The commands that run and inspect workflows: run, status, runs, cancel, resume,
reconcile, workers, show. Each prints to stdout, reports progress and errors on stderr,
and returns its exit status (see ``base.guarded``)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import IO, Any

import click

from ..client import GraphRun
from ..drawing import render
from ..engine.reconcile import Reconciler
from ..errors import (
    RunCancelled,
    RunFailed,
    RunNotResumable,
    RunTimeout,
    UsageError,
)
from ..state import state_for
from ..ui.listing import STATES, RunLister, RunQuery
from ..worker.heartbeat import live_workers
from .base import complete_run_id, guarded, json_option, run_id_argument
from .fmt import span
from .options import EXIT_FAILED, PROG, common_options, examples
from .output import (
    SUMMARY_OVER,
    dump,
    emit_json,
    print_runs,
    print_status,
    print_sweep,
    print_workers,
    progress_line,
    spec_data,
    worker_data,
)
from .support import (
    app_for,
    configure,
    configured_app,
    flow_registry,
    is_run_id,
    load_flow,
    named_app,
    open_run,
    parse_inputs,
    parse_since,
    registered_flow_name,
)


@click.command(
    "run",
    epilog=examples(
        "celery-graph run celery_graph.examples.etl:flow",
        "celery-graph -A proj.celery run nightly --wait",
        "celery-graph -A proj.tasks run flows/nightly.toml --wait",
        "celery-graph run celery_graph.examples.etl:flow --input n=5 --input factor=2 --wait",
        "celery-graph -A proj.celery run proj.flows:nightly --wait --timeout 600",
        "celery -A proj.celery workflow run proj.flows:nightly --wait --json",
    ),
)
@click.argument("flow_ref", metavar="MODULE:FLOW|FILE.toml|NAME")
@click.option(
    "-i",
    "--input",
    "inputs",
    multiple=True,
    metavar="KEY=VALUE",
    help="a run input (repeatable); VALUE is JSON if it parses, else a string",
)
@click.option(
    "-w",
    "--wait",
    is_flag=True,
    help="show progress, then print the result; exit 1 if the run fails",
)
@click.option(
    "--timeout",
    type=float,
    default=None,
    metavar="SECONDS",
    help="with --wait: give up waiting after this long (the run goes on)",
)
@click.option(
    "--name",
    "flow_name",
    default=None,
    metavar="NAME",
    help="the flow name the run records (default: the flow's own name, else MODULE:FLOW)",
)
@json_option
@common_options
@guarded
def run_command(
    flow_ref: str,
    inputs: tuple[str, ...],
    wait: bool,
    timeout: float | None,
    flow_name: str | None,
    as_json: bool,
) -> int:
    """Submit a graph (MODULE:FLOW, a pipeline FILE.toml, or the NAME of a flow in the
    app's graph_ui_flows); print its run id, or with --wait follow it to the end."""
    ctx = click.get_current_context()
    app = named_app(ctx)  # first: a pipeline file names tasks its module registers
    if registered_flow_name(flow_ref):
        if app is None:
            raise UsageError(
                f"{flow_ref!r} is not MODULE:FLOW or FILE.toml; to start a flow of "
                "graph_ui_flows by name, give its app: celery-graph -A APP run NAME"
            )
        registry = flow_registry(app)
        entry = registry.get(flow_ref)
        if entry is None:
            known = ", ".join(sorted(registry.flows)) or "none"
            raise UsageError(
                f"no flow named {flow_ref!r} in the app's graph_ui_flows (it has: {known}); "
                "or give MODULE:FLOW"
            )
        flow = entry.flow
        if flow_name is None:
            flow_name = entry.name
    else:
        flow = load_flow(flow_ref)
    if app is None:
        app = app_for(ctx)  # after the import: the flow's module may have made its app current
    configure(ctx, app).ping()
    name = flow_name or getattr(flow, "flow_name", None) or flow_ref
    run = flow.submit(parse_inputs(inputs), app=app, flow_name=name)
    if not wait:
        if as_json:
            emit_json({"run_id": run.id, "state": "running"}, sys.stdout)
        else:
            sys.stdout.write(run.id + "\n")
        return 0
    sys.stderr.write(f"run {run.id} submitted\n")
    return wait_for(run, timeout, as_json=as_json)


def wait_for(
    run: GraphRun,
    timeout: float | None,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    *,
    as_json: bool = False,
) -> int:
    """Follow ``run`` to its end: progress on ``err`` (redrawn in place on a terminal),
    the result on ``out``; returns the exit status of ``run --wait``."""
    out = out or sys.stdout
    err = err or sys.stderr
    tty = err.isatty()
    deadline = None if timeout is None else time.monotonic() + timeout
    last = ""
    while True:
        status = run.status()
        line = progress_line(status)
        if line != last:
            err.write(("\r\x1b[2K" + line) if tty else line + "\n")
            err.flush()
            last = line
        if status.done:
            break
        if deadline is not None and time.monotonic() > deadline:
            if tty:
                err.write("\n")
            err.write(
                f"{PROG}: error: run {run.id} still {status.state} after "
                f"{timeout} s (it keeps running; see `celery-graph status {run.id}`)\n"
            )
            if as_json:
                emit_json({"run_id": run.id, "state": status.state, "timed_out": True}, out)
            return EXIT_FAILED
        run.wait(0.2)  # wakes at once when the run ends
    if tty:
        err.write("\n")
    try:
        result = run.get(timeout=10)
    except RunFailed as exc:
        err.write(
            f"run {run.id} failed: node {exc.node_id!r} raised {exc.exc_type}: {exc.exc_message}\n"
        )
        if exc.traceback:
            err.write(exc.traceback.rstrip() + "\n")
        if as_json:
            error = {"node": exc.node_id, "type": exc.exc_type, "message": exc.exc_message}
            emit_json({"run_id": run.id, "state": "failed", "error": error}, out)
        return EXIT_FAILED
    except RunCancelled:
        err.write(f"run {run.id} was cancelled\n")
        if as_json:
            emit_json({"run_id": run.id, "state": "cancelled"}, out)
        return EXIT_FAILED
    except RunTimeout as exc:
        err.write(f"{PROG}: error: {exc}\n")
        return EXIT_FAILED
    err.write(f"run {run.id} succeeded in {span(status.created, status.finished)}\n")
    if as_json:
        emit_json({"run_id": run.id, "state": "succeeded", "result": result}, out)
    else:
        out.write(dump(result) + "\n")
    return 0


@click.command(
    "status",
    epilog=examples(
        "celery-graph status 0123456789abcdef0123456789abcdef",
        "celery-graph status 0123456789abcdef0123456789abcdef --all",
        "celery-graph status 0123456789abcdef0123456789abcdef --json",
    ),
)
@run_id_argument
@click.option(
    "--all",
    "every_node",
    is_flag=True,
    help="list every node, even in a run of more than 50 nodes (summarised by default)",
)
@json_option
@common_options
@guarded
def status_command(run_id: str, every_node: bool, as_json: bool) -> int:
    """Show a run's state and each node's state, attempts and worker; a large run is
    summarised by its counts by state (kept as nodes change: a few keys read)."""
    app = configured_app()
    run = open_run(app, run_id)
    status = run.summary()  # a few keys, whatever the size of the run
    if as_json or every_node or status.total <= SUMMARY_OVER:
        status = run.status()  # every node
    if as_json:
        emit_json(status.as_json(), sys.stdout)
    else:
        print_status(status, sys.stdout, every_node=every_node)
    return 0


@click.command(
    "runs",
    epilog=examples(
        "celery-graph runs",
        "celery-graph runs --state failed --since 1h",
        "celery-graph -A proj.celery runs --flow nightly --since 2026-12-01 --json",
        "celery-graph runs --limit 50 --key-prefix myapp:workflows",
    ),
)
@click.option(
    "-n", "--limit", type=click.IntRange(1, 500), default=20, show_default=True, help="how many"
)
@click.option(
    "--state",
    type=click.Choice(STATES),
    default=None,
    help="only runs in this state",
)
@click.option("--flow", default=None, metavar="NAME", help="only runs of this flow")
@click.option(
    "--since",
    default=None,
    metavar="WHEN",
    help="only runs started since WHEN: an age (30m, 2h, 7d) or a time "
    "(2026-12-01, 2026-12-01T08:00, UTC unless it names a zone)",
)
@json_option
@common_options
@guarded
def runs_command(
    limit: int, state: str | None, flow: str | None, since: str | None, as_json: bool
) -> int:
    """List recent runs with state, flow, start time and duration, newest first; the same
    query as the dashboard's runs page (from the run indexes)."""
    app = configured_app()
    store = state_for(app)
    since_ts = None if since is None else parse_since(since, store.runs.time())
    registry = flow_registry(app)
    lister = RunLister(store.index, registry.name_of, by_graph=registry.get)
    page = lister.page(RunQuery(state=state, flow=flow, since=since_ts, limit=limit))
    if as_json:
        emit_json(page.runs, sys.stdout)
    elif not page.runs:
        wanted = " ".join(
            f"{k} {v!r}" for k, v in (("state", state), ("flow", flow), ("since", since)) if v
        )
        sys.stdout.write(
            f"no runs{' with ' + wanted if wanted else ''} under key prefix {store.keys.prefix!r}\n"
        )
    else:
        print_runs(page.runs, sys.stdout)
    if page.partial:
        sys.stderr.write(
            f"{PROG}: listed what {page.scanned} runs held; older runs were not read "
            "(narrow the query with --since)\n"
        )
    return 0


@click.command(
    "cancel",
    epilog=examples(
        "celery-graph cancel 0123456789abcdef0123456789abcdef",
        "celery-graph cancel --terminate 0123456789abcdef0123456789abcdef",
    ),
)
@run_id_argument
@click.option(
    "--terminate",
    is_flag=True,
    help="also stop the nodes running now, through Celery's revoke(terminate=True) "
    "(their pool processes get --signal; prefork pool)",
)
@click.option(
    "--signal",
    "signal_name",
    default="SIGTERM",
    show_default=True,
    metavar="NAME",
    help="the signal --terminate sends (SIGTERM, SIGKILL, ...)",
)
@json_option
@common_options
@guarded
def cancel_command(run_id: str, terminate: bool, signal_name: str, as_json: bool) -> int:
    """Cancel a run: no pending node starts after this; with --terminate the running
    nodes are stopped too. With --json: the run id, whether this call cancelled it, the
    run's state and the task ids terminated."""
    app = configured_app()
    run = open_run(app, run_id)
    running = run.running_task_ids() if terminate else []
    cancelled = run.cancel(terminate=terminate, signal=signal_name)
    state = "cancelled" if cancelled else run.status().state
    if as_json:
        answer: dict[str, Any] = {"run_id": run.id, "cancelled": cancelled, "state": state}
        if terminate:
            answer["terminated"] = running
        emit_json(answer, sys.stdout)
    elif running:
        sys.stdout.write(f"terminating {', '.join(running)}\n")
    if cancelled:
        if not as_json:
            sys.stdout.write(f"cancelled run {run.id}\n")
        return 0
    if running:  # ended before, but nodes still ran: they were terminated
        return 0
    sys.stderr.write(f"{PROG}: run {run.id} already {state}; nothing to cancel\n")
    return EXIT_FAILED


@click.command(
    "signal",
    epilog=examples(
        "celery-graph signal 0123456789abcdef0123456789abcdef approval "
        """--data '{"approved": true, "by": "ana"}'"""
    ),
)
@run_id_argument
@click.argument("name", metavar="NAME")
@click.option(
    "--data",
    metavar="JSON",
    default="null",
    show_default=True,
    help="the payload (JSON): the result of the wait_for(NAME) node",
)
@json_option
@common_options
@guarded
def signal_command(run_id: str, name: str, data: str, as_json: bool) -> int:
    """Signal a run's wait_for(NAME) node with --data. A run that has not reached the wait
    yet keeps the signal for it."""
    try:
        payload = json.loads(data)
    except ValueError as exc:
        raise UsageError(f"--data {data!r} is not JSON: {exc}") from None
    app = configured_app()
    run = open_run(app, run_id)
    woken = run.signal(name, payload)
    if as_json:
        emit_json({"run_id": run.id, "wait": name, "delivered": woken}, sys.stdout)
    elif woken:
        sys.stdout.write(f"signal {name!r} delivered to run {run.id}: the wait goes on\n")
    else:
        sys.stdout.write(
            f"signal {name!r} kept for run {run.id}: the run has not reached the wait yet\n"
        )
    return 0


@click.command(
    "resume", epilog=examples("celery-graph resume 0123456789abcdef0123456789abcdef --wait")
)
@run_id_argument
@click.option("-w", "--wait", is_flag=True, help="show progress until the run ends")
@click.option(
    "--timeout",
    type=float,
    default=None,
    metavar="SECONDS",
    help="with --wait: give up waiting after this long (the run goes on)",
)
@json_option
@common_options
@guarded
def resume_command(run_id: str, wait: bool, timeout: float | None, as_json: bool) -> int:
    """Re-dispatch the failed and unfinished nodes of a failed or cancelled run;
    results already stored are kept."""
    app = configured_app()
    run = open_run(app, run_id)
    try:
        run.resume()
    except RunNotResumable as exc:
        if as_json:
            emit_json({"run_id": run.id, "resumed": False, "state": run.status().state}, sys.stdout)
        sys.stderr.write(f"{PROG}: {exc}\n")
        return EXIT_FAILED
    status = run.status()  # queued when its flow's concurrency limit has no free slot
    queued = ""
    if status.state == "queued":
        queued = f": queued (#{status.position} in line) for a slot of its flow's limit"
    if not wait:
        if as_json:
            emit_json({"run_id": run.id, "state": status.state}, sys.stdout)
        else:
            sys.stdout.write(f"resumed run {run.id}{queued}\n")
        return 0
    sys.stderr.write(f"run {run.id} resumed{queued}\n")
    return wait_for(run, timeout, as_json=as_json)


@click.command(
    "reconcile",
    epilog=examples(
        "celery-graph -A proj.celery reconcile --once",
        "celery-graph -A proj.celery reconcile --once --json",
        "celery-graph -A proj.celery reconcile --interval 5",
    ),
)
@click.option("--once", is_flag=True, help="one sweep, then exit")
@click.option(
    "--interval",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="seconds between sweeps (default: graph_reconcile_interval)",
)
@json_option
@common_options
@guarded
def reconcile_command(once: bool, interval: float | None, as_json: bool) -> int:
    """Send again what dead workers or lost messages left behind (every worker does this
    by itself; this sweeps once, or keeps sweeping). With --json, one JSON document per
    sweep (one line each when sweeping repeatedly)."""
    app = configured_app()
    state = state_for(app)
    state.ping()
    reconciler = Reconciler(app)
    while True:
        report = reconciler.sweep()
        if as_json and once:
            emit_json(vars(report), sys.stdout)
        elif as_json:
            sys.stdout.write(json.dumps(vars(report), sort_keys=True) + "\n")
        else:
            print_sweep(report, sys.stdout)
        sys.stdout.flush()
        if once:
            return 0
        time.sleep(interval or reconciler.state.settings.reconcile_interval)


@click.command(
    "workers",
    epilog=examples("celery-graph -A proj.celery workers", "celery-graph workers --json"),
)
@json_option
@common_options
@guarded
def workers_command(as_json: bool) -> int:
    """List graph workers (from the worker heartbeat registry)."""
    app = configured_app()
    workers = live_workers(app)
    if as_json:
        emit_json([worker_data(w) for w in workers], sys.stdout)
    elif not workers:
        sys.stdout.write(f"no live workers under key prefix {state_for(app).keys.prefix!r}\n")
    else:
        print_workers(workers, sys.stdout)
    return 0


@click.command(
    "show",
    epilog=examples(
        "celery-graph show celery_graph.examples.etl:flow",
        "celery-graph show celery_graph.examples.etl:flow --format dot | dot -Tsvg > etl.svg",
        "celery-graph show 0123456789abcdef0123456789abcdef --out run.svg",
        "celery-graph show 0123456789abcdef0123456789abcdef --json",
    ),
)
@click.argument("target", metavar="MODULE:FLOW|RUN_ID", shell_complete=complete_run_id)
@click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(["text", "mermaid", "dot"]),
    default=None,
    help="text (default), mermaid or dot, printed to stdout",
)
@click.option(
    "-o",
    "--out",
    "out_file",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="also write a picture, nodes coloured by state; the format follows the extension "
    "(.svg, or .png where a converter is installed)",
)
@click.option(
    "--png",
    "png_file",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="the same as --out FILE (kept for older scripts)",
)
@click.option(
    "--colour",
    "--color",
    "colour",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="colour node states in text output",
)
@json_option
@common_options
@guarded
def show_command(
    target: str,
    fmt: str | None,
    out_file: str | None,
    png_file: str | None,
    colour: str,
    as_json: bool,
) -> int:
    """Draw a graph (MODULE:FLOW) or a run's graph with node states (RUN_ID)."""
    ctx = click.get_current_context()
    if out_file and png_file:
        raise UsageError("--out and --png name the same picture: give one of them")
    if as_json and fmt:
        raise UsageError("--json and --format both choose what is printed: give one of them")
    picture = out_file or png_file
    states = None
    if is_run_id(target):
        app = app_for(ctx)
        configure(ctx, app)
        run = open_run(app, target)
        spec = run.spec()
        status = run.status()
        states = render.states_of(status)
        title = f"run {run.id}: {status.state}"
    else:
        spec = load_flow(target).compile()
        title = target
    if picture:
        save_picture(spec, picture, states, title)
        sys.stderr.write(f"wrote {picture} ({len(spec.nodes)} nodes)\n")
        if fmt is None and not as_json:
            return 0
    out = sys.stdout
    if as_json:
        emit_json(spec_data(spec, states, title), out)
    elif fmt == "mermaid":
        out.write(render.mermaid(spec, states))
    elif fmt == "dot":
        out.write(render.dot(spec, states))
    else:
        coloured = colour == "always" or (colour == "auto" and out.isatty())
        out.write(render.text(spec, states, colour=coloured, title=title))
    return 0


def save_picture(spec: Any, path: str, states: Any, title: str) -> None:
    """``render.save`` picks the format from the extension; before it exists, only PNG
    (``render.png``) can be written."""
    save = getattr(render, "save", None)
    try:
        if save is not None:
            save(spec, path, states, title=title)
        elif Path(path).suffix.lower() == ".png":
            render.png(spec, path, states, title=title)
        else:
            raise UsageError(f"{path}: this version writes pictures as .png only")
    except RuntimeError as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:  # no such directory, no permission
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
