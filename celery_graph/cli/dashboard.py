"""The ``ui`` command: the dashboard of ``celery_graph.ui``, served until SIGINT/SIGTERM
(``python -m celery_graph.ui`` runs this same command)."""

from __future__ import annotations

import sys

import click

from ..errors import UsageError
from ..keys import check_prefix
from ..ui import DEFAULT_PORT, serve
from ..ui.server import parse_basic_auth, require_tornado
from .base import common_options, examples, guarded
from .support import app_for, configure, given


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
    "--host",
    envvar="CELERY_GRAPH_UI_HOST",
    metavar="HOST",
    default="127.0.0.1",
    show_default=True,
    help="address to listen on (0.0.0.0 exposes it; default $CELERY_GRAPH_UI_HOST)",
)
@click.option(
    "--port",
    envvar="CELERY_GRAPH_UI_PORT",
    metavar="PORT",
    type=int,
    default=DEFAULT_PORT,
    show_default=True,
    help="port to listen on (0 picks a free one; default $CELERY_GRAPH_UI_PORT)",
)
@click.option(
    "--basic-auth",
    envvar="CELERY_GRAPH_UI_BASIC_AUTH",
    metavar="USER:PASSWORD",
    help="ask for these credentials (several separated by commas; default "
    "$CELERY_GRAPH_UI_BASIC_AUTH, which keeps the password out of `ps`)",
)
@click.option(
    "--flower-url",
    envvar="CELERY_GRAPH_UI_FLOWER_URL",
    metavar="URL",
    help="link nodes to their tasks in this Flower",
)
@click.option(
    "--url-prefix",
    default="",
    metavar="PATH",
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
        serve(
            app,
            host,
            port,
            basic_auth=basic_auth,
            flower_url=flower_url,
            url_prefix=url_prefix,
            out=sys.stderr,
        )
    except OSError as exc:  # the port is taken, the address is not this host's
        raise UsageError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from exc
    return 0
