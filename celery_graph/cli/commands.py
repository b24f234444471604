"""The commands, on click: ``celery-graph COMMAND`` and ``celery -A APP workflow COMMAND``.

Both groups hold the same commands. Under ``celery-graph`` each command takes ``-A APP``
(before or after the command name); under ``celery ... workflow`` the app is Celery's own
``-A`` and the commands have no ``-A`` of their own. Every command also takes
``--redis-url`` and ``--key-prefix``. Bad input prints one line ``celery-graph: error:
...`` on stderr and exits 2; a failed run or a refused cancel exits 1.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .. import render
from ..client import GraphRun
from ..errors import (
    CeleryGraphError,
    GraphNotFound,
    RunCancelled,
    RunFailed,
    RunNotFound,
    RunNotResumable,
    RunTimeout,
)
from ..fmt import span
from ..keys import check_prefix
from ..reconcile import Reconciler
from ..registry import live_workers, print_workers
from ..ui import DEFAULT_PORT, serve
from ..ui.server import UsageError as UiUsageError
from ..ui.server import parse_basic_auth, require_tornado
from .output import (
    dump,
    emit_json,
    print_runs,
    print_status,
    print_sweep,
    progress_line,
    run_row,
    spec_data,
    status_data,
    worker_data,
)
from .support import (
    EXIT_FAILED,
    EXIT_USAGE,
    UsageError,
    app_for,
    configure,
    given,
    is_run_id,
    load_flow,
    open_run,
    parse_inputs,
    remember,
)

PROG = "celery-graph"
COMPLETE_VAR = "_CELERY_GRAPH_COMPLETE"  # click's shell completion (its default name)

# -- options every command shares -----------------------------------------------------

APP_HELP = "Celery app to use, like `celery -A`: module or module:attr"
REDIS_HELP = (
    "Redis holding graph state (default: app.conf.graph_redis_url, "
    "$CELERY_GRAPH_REDIS_URL, or the app's Redis broker)"
)
PREFIX_HELP = (
    "key prefix of graph state (default: app.conf.graph_key_prefix, "
    "$CELERY_GRAPH_KEY_PREFIX, or 'celery_graph')"
)


def app_option(**extra: Any) -> Callable[[Any], Any]:
    return click.option(
        "-A", "--app", metavar="APP", expose_value=False, callback=remember, help=APP_HELP,
        **extra,
    )


def settings_options(f: Any) -> Any:
    f = click.option(
        "--key-prefix", metavar="PREFIX", expose_value=False, callback=remember, help=PREFIX_HELP
    )(f)
    return click.option(
        "--redis-url", metavar="URL", expose_value=False, callback=remember, help=REDIS_HELP
    )(f)


def common_options(f: Any) -> Any:
    return app_option()(settings_options(f))


def examples(*lines: str) -> str:
    # "\b" keeps click from re-wrapping the paragraph
    return "\b\nexamples:\n" + "\n".join(f"  {line}" for line in lines)


def quiet_stdout() -> None:
    """After a closed pipe (``celery-graph runs | head -1``): send what is left of
    stdout nowhere, so neither this command nor the interpreter's exit complains."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def guarded(fn: Callable[..., int | None]) -> Callable[..., None]:
    """Run a command body: one error line and exit 2 for bad input, quiet on a closed
    pipe, the body's return value as the exit status."""

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> None:
        ctx = click.get_current_context()
        try:
            code = fn(*args, **kwargs) or 0
            sys.stdout.flush()  # a closed pipe shows here, not at the interpreter's exit
        except (UsageError, UiUsageError, CeleryGraphError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            click.echo(f"{PROG}: error: {message}", err=True)
            code = EXIT_USAGE
        except BrokenPipeError:
            quiet_stdout()
            code = EXIT_FAILED
        except KeyboardInterrupt:
            click.echo("\ninterrupted (the run, if any, goes on)", err=True)
            code = 130
        ctx.exit(code)

    return command


def complete_run_id(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[click.shell_completion.CompletionItem]:
    """Run ids of recent runs, for shell completion; nothing when Redis is not there."""
    try:
        app = app_for(ctx)
        ids = configure(ctx, app).runs.recent(50)
    except Exception:
        return []
    return [click.shell_completion.CompletionItem(i) for i in ids if i.startswith(incomplete)]


json_option = click.option("--json", "as_json", is_flag=True, help="print one JSON document")
run_id_argument = click.argument("run_id", metavar="RUN_ID", shell_complete=complete_run_id)


# -- the commands ---------------------------------------------------------------------


@click.command(
    "run",
    epilog=examples(
        "celery-graph run examples.etl:flow",
        "celery-graph -A examples.pipeline_tasks run examples/pipeline.toml --wait",
        "celery-graph run examples.etl:flow --input n=5 --input factor=2 --wait",
        "celery-graph -A proj.celery run proj.flows:nightly --wait --timeout 600",
        "celery -A proj.celery workflow run proj.flows:nightly --wait --json",
    ),
)
@click.argument("flow_ref", metavar="MODULE:FLOW|FILE.toml")
@click.option(
    "-i", "--input", "inputs", multiple=True, metavar="KEY=VALUE",
    help="a run input (repeatable); VALUE is JSON if it parses, else a string",
)
@click.option(
    "-w", "--wait", is_flag=True,
    help="show progress, then print the result; exit 1 if the run fails",
)
@click.option(
    "--timeout", type=float, default=None, metavar="SECONDS",
    help="with --wait: give up waiting after this long (the run goes on)",
)
@json_option
@common_options
@guarded
def run_command(
    flow_ref: str, inputs: tuple[str, ...], wait: bool, timeout: float | None, as_json: bool
) -> int:
    """Submit a graph; print its run id, or with --wait follow it to the end."""
    ctx = click.get_current_context()
    flow = load_flow(flow_ref)
    app = app_for(ctx)  # after the import: the flow's module may have made its app current
    configure(ctx, app).ping()
    run = flow.submit(parse_inputs(inputs), app=app)
    if not wait:
        if as_json:
            emit_json({"run_id": run.id, "state": "running"}, sys.stdout)
        else:
            sys.stdout.write(run.id + "\n")
        return 0
    sys.stderr.write(f"run {run.id} submitted\n")
    return wait_for(run, timeout, as_json)


def wait_for(run: GraphRun, timeout: float | None, as_json: bool) -> int:
    out, err = sys.stdout, sys.stderr
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
    "--all", "every_node", is_flag=True,
    help="list every node, even in a run of more than 50 nodes (summarised by default)",
)
@json_option
@common_options
@guarded
def status_command(run_id: str, every_node: bool, as_json: bool) -> int:
    """Show a run's state and each node's state, attempts and worker; a large run is
    summarised (counts, failed, waiting and slowest nodes)."""
    ctx = click.get_current_context()
    app = app_for(ctx)
    configure(ctx, app)
    status = open_run(app, run_id).status()
    if as_json:
        emit_json(status_data(status), sys.stdout)
    else:
        print_status(status, sys.stdout, every_node=every_node)
    return 0


@click.command(
    "runs",
    epilog=examples(
        "celery-graph runs",
        "celery-graph runs --limit 50 --key-prefix myapp:workflows",
        "celery-graph runs --json",
    ),
)
@click.option("-n", "--limit", type=int, default=20, show_default=True, help="how many")
@json_option
@common_options
@guarded
def runs_command(limit: int, as_json: bool) -> int:
    """List recent runs with state, start time and duration."""
    ctx = click.get_current_context()
    app = app_for(ctx)
    state = configure(ctx, app)
    rows = []
    for run_id in state.runs.recent(limit):
        try:
            rows.append(run_row(GraphRun(run_id, app=app).status()))
        except (RunNotFound, GraphNotFound):
            continue  # expired between the listing and the read
    if as_json:
        emit_json(rows, sys.stdout)
    elif not rows:
        sys.stdout.write(f"no runs under key prefix {state.keys.prefix!r}\n")
    else:
        print_runs(rows, sys.stdout)
    return 0


@click.command(
    "cancel", epilog=examples("celery-graph cancel 0123456789abcdef0123456789abcdef")
)
@run_id_argument
@common_options
@guarded
def cancel_command(run_id: str) -> int:
    """Cancel a run: no pending node starts after this."""
    ctx = click.get_current_context()
    app = app_for(ctx)
    configure(ctx, app)
    run = open_run(app, run_id)
    if run.cancel():
        sys.stdout.write(f"cancelled run {run.id}\n")
        return 0
    sys.stderr.write(f"{PROG}: run {run.id} already {run.status().state}; nothing to cancel\n")
    return EXIT_FAILED


@click.command(
    "resume", epilog=examples("celery-graph resume 0123456789abcdef0123456789abcdef --wait")
)
@run_id_argument
@click.option("-w", "--wait", is_flag=True, help="show progress until the run ends")
@click.option(
    "--timeout", type=float, default=None, metavar="SECONDS",
    help="with --wait: give up waiting after this long (the run goes on)",
)
@json_option
@common_options
@guarded
def resume_command(run_id: str, wait: bool, timeout: float | None, as_json: bool) -> int:
    """Re-dispatch the failed and unfinished nodes of a failed or cancelled run;
    results already stored are kept."""
    ctx = click.get_current_context()
    app = app_for(ctx)
    configure(ctx, app)
    run = open_run(app, run_id)
    try:
        run.resume()
    except RunNotResumable as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return EXIT_FAILED
    if not wait:
        if as_json:
            emit_json({"run_id": run.id, "state": "running"}, sys.stdout)
        else:
            sys.stdout.write(f"resumed run {run.id}\n")
        return 0
    sys.stderr.write(f"run {run.id} resumed\n")
    return wait_for(run, timeout, as_json)


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
    "--interval", type=float, default=None, metavar="SECONDS",
    help="seconds between sweeps (default: graph_reconcile_interval)",
)
@json_option
@common_options
@guarded
def reconcile_command(once: bool, interval: float | None, as_json: bool) -> int:
    """Send again what dead workers or lost messages left behind (every worker does this
    by itself; this sweeps once, or keeps sweeping). With --json, one JSON document per
    sweep (one line each when sweeping repeatedly)."""
    ctx = click.get_current_context()
    app = app_for(ctx)
    configure(ctx, app).ping()
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
    ctx = click.get_current_context()
    app = app_for(ctx)
    configure(ctx, app)
    if as_json:
        emit_json([worker_data(w) for w in live_workers(app)], sys.stdout)
        return 0
    return int(print_workers(app, sys.stdout))


@click.command(
    "show",
    epilog=examples(
        "celery-graph show examples.etl:flow",
        "celery-graph show examples.etl:flow --format dot | dot -Tsvg > etl.svg",
        "celery-graph show 0123456789abcdef0123456789abcdef --out run.svg",
        "celery-graph show 0123456789abcdef0123456789abcdef --json",
    ),
)
@click.argument("target", metavar="MODULE:FLOW|RUN_ID", shell_complete=complete_run_id)
@click.option(
    "-f", "--format", "fmt", type=click.Choice(["text", "mermaid", "dot"]), default=None,
    help="text (default), mermaid or dot, printed to stdout",
)
@click.option(
    "-o", "--out", "out_file", metavar="FILE", type=click.Path(dir_okay=False),
    help="also write a picture, nodes coloured by state; the format follows the extension "
    "(.svg, or .png where a converter is installed)",
)
@click.option(
    "--png", "png_file", metavar="FILE", type=click.Path(dir_okay=False),
    help="the same as --out FILE (kept for older scripts)",
)
@click.option(
    "--colour", "--color", "colour", type=click.Choice(["auto", "always", "never"]),
    default="auto", show_default=True, help="colour node states in text output",
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


@click.command(
    "ui",
    epilog=examples(
        "celery-graph -A proj.celery ui",
        "celery-graph -A proj.celery ui --port 8080 --flower-url http://localhost:5555",
        "CELERY_GRAPH_UI_BASIC_AUTH=admin:s3cret celery-graph -A proj ui --host 0.0.0.0",
        "celery -A proj.celery workflow ui --url-prefix /graphs",
    ),
)
@click.option(
    "--host", default="127.0.0.1", show_default=True,
    help="address to listen on (0.0.0.0 exposes it)",
)
@click.option(
    "--port", type=int, default=DEFAULT_PORT, show_default=True,
    help="port to listen on (0 picks a free one)",
)
@click.option(
    "--basic-auth", envvar="CELERY_GRAPH_UI_BASIC_AUTH", metavar="USER:PASSWORD",
    help="ask for these credentials (several separated by commas; default "
    "$CELERY_GRAPH_UI_BASIC_AUTH, which keeps the password out of `ps`)",
)
@click.option(
    "--flower-url", envvar="CELERY_GRAPH_UI_FLOWER_URL", metavar="URL",
    help="link nodes to their tasks in this Flower",
)
@click.option(
    "--url-prefix", default="", metavar="PATH",
    help="serve under this path, behind a reverse proxy (e.g. /graphs)",
)
@common_options
@guarded
def ui_command(
    host: str, port: int, basic_auth: str | None, flower_url: str | None, url_prefix: str
) -> int:
    """Serve the dashboard: runs, their graphs with live node states, actions, flows to
    start, workers (see docs/ui.md). Needs the `ui` extra (Tornado)."""
    ctx = click.get_current_context()
    require_tornado()  # before anything else: the one thing a plain install lacks
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: expected 0 to 65535")
    parse_basic_auth(basic_auth)  # malformed credentials fail before the app loads
    prefix = given(ctx, "key_prefix")
    if prefix:
        check_prefix(prefix)
    app = app_for(ctx)
    configure(ctx, app)
    try:
        serve(app, host, port, basic_auth=basic_auth, flower_url=flower_url,
              url_prefix=url_prefix, out=sys.stderr)
    except OSError as exc:  # the port is taken, the address is not this host's
        raise UsageError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from exc
    return 0


COMMANDS = (
    run_command,
    status_command,
    runs_command,
    cancel_command,
    resume_command,
    reconcile_command,
    workers_command,
    show_command,
    ui_command,
)


# -- the two groups -------------------------------------------------------------------


@click.group(
    PROG,
    epilog=examples(
        "celery-graph run examples.etl:flow --wait",
        "celery-graph run examples.map_reduce:flow --input top=5 --wait --timeout 60",
        "celery-graph runs --redis-url redis://localhost:6379/0",
        "celery-graph status 4bd5d23c52f14f4a96ea8df88b7922ea",
        "celery-graph show examples.etl:flow --format mermaid",
        "celery-graph show 4bd5d23c52f14f4a96ea8df88b7922ea --out run.svg",
        "celery -A proj.celery workflow runs --json",
    ),
    context_settings={"help_option_names": ["-h", "--help"]},
)
@app_option(envvar="CELERY_APP")
@settings_options
def celery_graph() -> None:
    """Run and inspect celery-graph workflows.

    The same commands run under Celery's own command as `celery -A APP workflow ...`.

    \b
    Shell completion (bash; zsh_source and fish_source for the others):
      eval "$(_CELERY_GRAPH_COMPLETE=bash_source celery-graph)"
    """


@click.group(
    "workflow",
    epilog=examples(
        "celery -A proj.celery workflow run proj.flows:nightly --wait",
        "celery -A proj.celery workflow runs --json",
        "celery -A proj.celery workflow status 4bd5d23c52f14f4a96ea8df88b7922ea",
        "celery -A proj.celery workflow ui --port 5580",
    ),
    context_settings={"help_option_names": ["-h", "--help"]},
)
@settings_options
def workflow() -> None:
    """celery-graph workflows: run, status, runs, cancel, resume, reconcile, workers,
    show, ui. The app is Celery's `-A`."""


def without_app_option(command: click.Command) -> click.Command:
    """A copy of ``command`` whose app comes from ``celery -A`` (Celery itself reports a
    sub-command's ``-A`` as misplaced)."""
    clone = copy.copy(command)
    clone.params = [p for p in command.params if p.name != "app"]
    return clone


for _command in COMMANDS:
    celery_graph.add_command(_command)
    workflow.add_command(without_app_option(_command))


def main(argv: list[str] | None = None) -> int:
    """The ``celery-graph`` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args and not os.environ.get(COMPLETE_VAR):
        ctx = click.Context(celery_graph, info_name=PROG, **celery_graph.context_settings)
        click.echo(celery_graph.get_help(ctx), err=True)
        return EXIT_USAGE
    try:
        code = celery_graph.main(
            args, prog_name=PROG, complete_var=COMPLETE_VAR, standalone_mode=False
        )
    except click.ClickException as exc:  # click's own parsing: unknown option, bad value
        click.echo(f"{PROG}: error: {exc.format_message()}", err=True)
        return EXIT_USAGE
    except click.Abort:
        return 130
    except BrokenPipeError:
        quiet_stdout()
        return EXIT_FAILED
    return int(code or 0)
