"""The ``celery-graph`` command: run, status, runs, cancel, resume, workers, show.

Every sub-command takes ``-A APP`` (like ``celery -A``), ``--redis-url`` and
``--key-prefix``; on bad input it prints one line ``celery-graph: error: ...`` to stderr
and exits with status 2 (bad input) or 1 (a run that failed, a refused cancel).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from typing import IO, Any

from . import render
from .apploader import load_app
from .client import GraphRun
from .dsl import Flow
from .errors import (
    CeleryGraphError,
    GraphNotFound,
    RunCancelled,
    RunFailed,
    RunNotFound,
    RunNotResumable,
    RunTimeout,
)
from .fmt import span, table, timestamp
from .keys import RUN_ID_RE
from .pipeline import PipelineError
from .pipeline import load as load_pipeline
from .reconcile import Reconciler
from .registry import print_workers
from .state import State, state_for


class UsageError(Exception):
    """Bad input on the command line; the message is printed as one line."""


EXIT_FAILED = 1  # a run failed or was cancelled; cancel refused
EXIT_USAGE = 2  # bad input: unknown run id, Redis down, unimportable target


# -- loading apps and flows ------------------------------------------------------------


def load_flow(ref: str) -> Any:
    """The Flow at ``module:attr``, or built from a pipeline file ``path.toml``."""
    if ref.endswith(".toml"):
        try:
            return load_pipeline(ref)
        except PipelineError as exc:
            raise UsageError(str(exc)) from exc

    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise UsageError(f"{ref!r} is not MODULE:FLOW (e.g. examples.etl:flow)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(module)
    except Exception as exc:
        raise UsageError(f"cannot import module {module!r}: {type(exc).__name__}: {exc}") from exc
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, Flow):
        raise UsageError(f"{ref} is a {type(obj).__name__}, not a celery-graph flow")
    return obj


def configure(app: Any, args: argparse.Namespace) -> State:
    """Apply --redis-url / --key-prefix, and make sure the app has a broker to send to."""
    if args.redis_url:
        app.conf.graph_redis_url = args.redis_url
    if args.key_prefix:
        app.conf.graph_key_prefix = args.key_prefix
    # A bare app (no -A, no app in the flow's module) sends through the graph Redis.
    if not app.conf.broker_url and not os.environ.get("CELERY_BROKER_URL"):
        url = app.conf.get("graph_redis_url") or os.environ.get("CELERY_GRAPH_REDIS_URL")
        if url:
            app.conf.broker_url = url
    return state_for(app)  # validates the settings now, with a one-line error


def parse_inputs(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; a value is JSON when it parses as JSON, else a string."""
    inputs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"--input {pair!r}: expected key=value with a parameter name as key")
        try:
            inputs[key] = json.loads(raw)
        except ValueError:
            inputs[key] = raw
    return inputs


def open_run(app: Any, run_id: str) -> GraphRun:
    if not RUN_ID_RE.match(run_id):
        raise UsageError(f"{run_id!r} is not a run id (32 hex digits)")
    run = GraphRun(run_id, app=app)
    run.status()  # raises RunNotFound for an unknown id
    return run


# -- formatting ------------------------------------------------------------------------


def progress_line(status: Any, width: int = 30) -> str:
    counts = status.counts()
    total = len(status.nodes) or 1
    skipped = counts.get("skipped", 0)  # a branch not taken counts as done
    done = counts.get("succeeded", 0) + skipped
    failed = counts.get("failed", 0)
    filled = int(width * (done + failed) / total)
    bar = "#" * filled + "-" * (width - filled)
    running = [nid for nid, n in status.nodes.items() if n.state == "running"]
    line = f"[{bar}] {done}/{total} nodes done"
    if skipped:
        line += f" ({skipped} skipped)"
    if failed:
        line += f", {failed} failed"
    if running:
        line += "  running: " + ", ".join(running[:4]) + (" ..." if len(running) > 4 else "")
    return line


def print_status(status: Any, out: IO[str]) -> None:
    out.write(f"run       {status.run_id}\n")
    out.write(f"state     {status.state}\n")
    out.write(f"graph     {status.graph_id}\n")
    out.write(f"started   {timestamp(status.created)}\n")
    out.write(f"finished  {timestamp(status.finished)}\n")
    out.write(f"duration  {span(status.created, status.finished)}\n")
    counts = status.counts()
    out.write("nodes     " + ", ".join(f"{counts[k]} {k}" for k in sorted(counts)) + "\n\n")
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
    if status.error:
        err = status.error
        where = f"node {err.get('node')!r}: " if err.get("node") else ""
        out.write(f"\nerror: {where}{err.get('type', 'Error')}: {err.get('message', '')}\n")


def dump(value: Any) -> str:
    try:
        line = json.dumps(value, sort_keys=True, default=str)
        if len(line) <= 100:
            return line
        return json.dumps(value, indent=2, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(value)


# -- commands --------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    app = load_app(args.app)
    flow = load_flow(args.flow)
    if not args.app:
        app = load_app(None)  # the module just imported may have made its app current
    configure(app, args).ping()
    inputs = parse_inputs(args.input or [])
    run = flow.submit(inputs, app=app)
    if not args.wait:
        out.write(run.id + "\n")
        return 0
    err.write(f"run {run.id} submitted\n")
    return wait_for(run, args.timeout, out, err)


def wait_for(run: Any, timeout: float | None, out: IO[str], err: IO[str]) -> int:
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
                f"celery-graph: error: run {run.id} still {status.state} after "
                f"{timeout} s (it keeps running; see `celery-graph status {run.id}`)\n"
            )
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
        return EXIT_FAILED
    except RunCancelled:
        err.write(f"run {run.id} was cancelled\n")
        return EXIT_FAILED
    except RunTimeout as exc:
        err.write(f"celery-graph: error: {exc}\n")
        return EXIT_FAILED
    err.write(f"run {run.id} succeeded in {span(status.created, status.finished)}\n")
    out.write(dump(result) + "\n")
    return 0


def cmd_status(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    app = load_app(args.app)
    configure(app, args)
    run = open_run(app, args.run_id)
    status = run.status()
    if args.json:
        data = {
            "run_id": status.run_id,
            "state": status.state,
            "graph_id": status.graph_id,
            "created": status.created,
            "finished": status.finished,
            "error": status.error,
            "nodes": {k: vars(v) for k, v in status.nodes.items()},
        }
        out.write(json.dumps(data, indent=2) + "\n")
    else:
        print_status(status, out)
    return 0


def cmd_runs(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    app = load_app(args.app)
    state = configure(app, args)
    ids = state.runs.recent(args.limit)
    rows = [["RUN ID", "STATE", "STARTED (UTC)", "DURATION", "NODES DONE"]]
    for run_id in ids:
        try:
            status = GraphRun(run_id, app=app).status()
        except (RunNotFound, GraphNotFound):
            continue  # expired between the listing and the read
        counts = status.counts()
        done = counts.get("succeeded", 0) + counts.get("skipped", 0)
        rows.append(
            [
                run_id,
                status.state,
                timestamp(status.created),
                span(status.created, status.finished),
                f"{done}/{len(status.nodes)}",
            ]
        )
    if len(rows) == 1:
        out.write(f"no runs under key prefix {state.keys.prefix!r}\n")
        return 0
    table(rows, out)
    return 0


def cmd_cancel(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    app = load_app(args.app)
    configure(app, args)
    run = open_run(app, args.run_id)
    if run.cancel():
        out.write(f"cancelled run {run.id}\n")
        return 0
    err.write(f"celery-graph: run {run.id} already {run.status().state}; nothing to cancel\n")
    return EXIT_FAILED


def cmd_reconcile(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    app = load_app(args.app)
    configure(app, args).ping()
    reconciler = Reconciler(app)
    while True:
        report = reconciler.sweep()
        if report.locked_out:
            out.write("another process is sweeping; nothing done\n")
        else:
            out.write(
                f"looked at {report.runs} run(s): sent again {len(report.redelivered)}"
                + "".join(f"\n  sent again {r}" for r in report.redelivered)
                + f"\n  still queued (busy queue): {report.extended}, skips passed on: "
                f"{report.skips}, runs failed: {len(report.failed)}, canvases continued: "
                f"{len(report.continued)}\n"
            )
        out.flush()
        if args.once:
            return 0
        time.sleep(args.interval or reconciler.state.settings.reconcile_interval)


def cmd_workers(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    app = load_app(args.app)
    configure(app, args)
    return int(print_workers(app, out))


def cmd_show(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    app = load_app(args.app)
    states = None
    title = None
    if RUN_ID_RE.match(args.target):
        configure(app, args)
        run = open_run(app, args.target)
        spec = run.spec()
        status = run.status()
        states = render.states_of(status)
        title = f"run {run.id}: {status.state}"
    else:
        flow = load_flow(args.target)
        spec = flow.compile()
        title = args.target
    if args.png:
        try:
            render.png(spec, args.png, states, title=title)
        except RuntimeError as exc:
            raise UsageError(str(exc)) from exc
        err.write(f"wrote {args.png} ({len(spec.nodes)} nodes)\n")
        if args.format == "text" and not args.format_given:
            return 0
    if args.format == "mermaid":
        out.write(render.mermaid(spec, states))
    elif args.format == "dot":
        out.write(render.dot(spec, states))
    else:
        colour = args.colour == "always" or (args.colour == "auto" and out.isatty())
        out.write(render.text(spec, states, colour=colour, title=title))
    return 0


# -- argument parsing ------------------------------------------------------------------

EPILOG = """\
examples:
  celery-graph run examples.etl:flow --wait
  celery-graph run examples.map_reduce:flow --input top=5 --wait --timeout 60
  celery-graph runs --redis-url redis://localhost:6379/0
  celery-graph status 4bd5d23c52f14f4a96ea8df88b7922ea
  celery-graph show examples.etl:flow --format mermaid
  celery-graph show 4bd5d23c52f14f4a96ea8df88b7922ea --png run.png
"""

def cmd_resume(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    app = load_app(args.app)
    configure(app, args)
    run = open_run(app, args.run_id)
    try:
        run.resume()
    except RunNotResumable as exc:
        err.write(f"celery-graph: {exc}\n")
        return EXIT_FAILED
    if not args.wait:
        out.write(f"resumed run {run.id}\n")
        return 0
    err.write(f"run {run.id} resumed\n")
    return wait_for(run, args.timeout, out, err)


COMMAND_EXAMPLES = {
    "run": "  celery-graph run examples.etl:flow\n"
    "  celery-graph -A examples.pipeline_tasks run examples/pipeline.toml --wait\n"
    "  celery-graph run examples.etl:flow --input n=5 --input factor=2 --wait\n"
    "  celery-graph -A proj.celery run proj.flows:nightly --wait --timeout 600",
    "status": "  celery-graph status 0123456789abcdef0123456789abcdef\n"
    "  celery-graph status 0123456789abcdef0123456789abcdef --json",
    "runs": "  celery-graph runs\n  celery-graph runs --limit 50 --key-prefix myapp:workflows",
    "cancel": "  celery-graph cancel 0123456789abcdef0123456789abcdef",
    "resume": "  celery-graph resume 0123456789abcdef0123456789abcdef --wait",
    "workers": "  celery-graph -A proj.celery workers",
    "reconcile": "  celery-graph -A proj.celery reconcile --once\n"
    "  celery-graph -A proj.celery reconcile --interval 5",
    "show": "  celery-graph show examples.etl:flow\n"
    "  celery-graph show examples.etl:flow --format dot | dot -Tsvg > etl.svg\n"
    "  celery-graph show 0123456789abcdef0123456789abcdef --png run.png",
}


def common_options(default: Any = None) -> argparse.ArgumentParser:
    # Sub-commands repeat these options with SUPPRESS defaults, so `-A x run ...` and
    # `run -A x ...` both work (a plain None default in the sub-parser would win).
    common = argparse.ArgumentParser(add_help=False, argument_default=default)
    common.add_argument(
        "-A",
        "--app",
        metavar="APP",
        help="Celery app to use, like `celery -A`: module or module:attr",
    )
    common.add_argument(
        "--redis-url",
        metavar="URL",
        help="Redis holding graph state (default: app.conf.graph_redis_url, "
        "$CELERY_GRAPH_REDIS_URL, or the app's Redis broker)",
    )
    common.add_argument(
        "--key-prefix",
        metavar="PREFIX",
        help="key prefix of graph state (default: app.conf.graph_key_prefix, "
        "$CELERY_GRAPH_KEY_PREFIX, or 'celery_graph')",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    sub_common = common_options(argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="celery-graph",
        description="Run and inspect celery-graph workflows.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_,
            description=help_,
            parents=[sub_common],
            epilog="examples:\n" + COMMAND_EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = add("run", "Submit a graph; print its run id, or with --wait follow it to the end.")
    p.add_argument("flow", metavar="MODULE:FLOW|FILE.toml",
                   help="a Flow object in an importable module, or a pipeline file")
    p.add_argument(
        "-i",
        "--input",
        action="append",
        metavar="KEY=VALUE",
        help="a run input (repeatable); VALUE is JSON if it parses, else a string",
    )
    p.add_argument(
        "-w",
        "--wait",
        action="store_true",
        help="show progress, then print the result; exit 1 if the run fails",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --wait: give up waiting after this long (the run goes on)",
    )
    p.set_defaults(func=cmd_run)

    p = add("status", "Show a run's state and each node's state, attempts and worker.")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_status)

    p = add("runs", "List recent runs with state, start time and duration.")
    p.add_argument("-n", "--limit", type=int, default=20, help="how many (default 20)")
    p.set_defaults(func=cmd_runs)

    p = add("cancel", "Cancel a run: no pending node starts after this.")
    p.add_argument("run_id", metavar="RUN_ID")
    p.set_defaults(func=cmd_cancel)

    p = add(
        "resume",
        "Re-dispatch the failed and unfinished nodes of a failed or cancelled run; "
        "results already stored are kept.",
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--wait", action="store_true", help="show progress until the run ends")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="with --wait: give up waiting after this long (the run goes on)")
    p.set_defaults(func=cmd_resume)

    p = add(
        "reconcile",
        "Send again what dead workers or lost messages left behind (every worker does this "
        "by itself; this sweeps once, or keeps sweeping).",
    )
    p.add_argument("--once", action="store_true", help="one sweep, then exit")
    p.add_argument("--interval", type=float, default=None, metavar="SECONDS",
                   help="seconds between sweeps (default: graph_reconcile_interval)")
    p.set_defaults(func=cmd_reconcile)

    p = add("workers", "List graph workers (from the graph-worker heartbeat registry).")
    p.set_defaults(func=cmd_workers)

    p = add("show", "Draw a graph (MODULE:FLOW) or a run's graph with node states (RUN_ID).")
    p.add_argument("target", metavar="MODULE:FLOW|RUN_ID")
    p.add_argument(
        "-f",
        "--format",
        choices=("text", "mermaid", "dot"),
        default=None,
        help="text (default), mermaid or dot, printed to stdout",
    )
    p.add_argument(
        "--png",
        metavar="FILE",
        help="also write a PNG picture, nodes coloured by state (needs matplotlib)",
    )
    p.add_argument(
        "--colour",
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour node states in text output (default: when stdout is a tty)",
    )
    p.set_defaults(func=cmd_show)
    return parser


def main(
    argv: list[str] | None = None, out: IO[str] | None = None, err: IO[str] | None = None
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    if hasattr(args, "format"):
        args.format_given = args.format is not None
        args.format = args.format or "text"
    try:
        return int(args.func(args, out, err))
    except (UsageError, CeleryGraphError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        err.write(f"celery-graph: error: {message}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        err.write("\ninterrupted (the run, if any, goes on)\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
