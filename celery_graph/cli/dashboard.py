"""The ``ui`` command: the dashboard of ``celery_graph.ui``, served until SIGINT/SIGTERM
(``python -m celery_graph.ui`` runs this same command)."""

from __future__ import annotations

import os
import sys

import click

from ..errors import UsageError
from ..keys import check_prefix
from ..ui import DEFAULT_PORT, serve
from ..ui.guard import check_exposure, parse_allowed_hosts
from ..ui.server import parse_basic_auth, require_tornado
from ..ui.tokens import ApiTokens
from .base import guarded
from .options import common_options, examples, given
from .support import app_for, configure

ENV_ALLOWED_HOSTS = "CELERY_GRAPH_UI_ALLOWED_HOSTS"
ENV_API_TOKEN = "CELERY_GRAPH_UI_API_TOKEN"  # tokens separated by spaces


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
    help="address to listen on (default $CELERY_GRAPH_UI_HOST or 127.0.0.1; 0.0.0.0 exposes it: "
    "then give --basic-auth, or --no-auth)",
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
    "--no-auth",
    is_flag=True,
    help="serve an address other machines reach (--host 0.0.0.0) without credentials, on purpose",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="a host name requests may be sent to besides loopback and --host (the name of a "
    "proxy in front; * for any); repeatable, or $CELERY_GRAPH_UI_ALLOWED_HOSTS, comma "
    "separated",
)
@click.option(
    "--flower-url",
    envvar="CELERY_GRAPH_UI_FLOWER_URL",
    metavar="URL",
    help="link nodes to their tasks in this Flower",
)
@click.option(
    "--api-token",
    "api_tokens",
    multiple=True,
    metavar="TOKEN[=FLOW,...]",
    help="accept this bearer token on the trigger API, POST /api/flows/<name>/runs (only for "
    "these flows when given); repeatable, or $CELERY_GRAPH_UI_API_TOKEN, which keeps it out "
    "of `ps`",
)
@click.option(
    "--api-tokens-file",
    "api_token_files",
    multiple=True,
    metavar="PATH",
    help="bearer tokens of the trigger API, one a line, each optionally followed by the flows "
    "it may start",
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
    host: str,
    port: int,
    basic_auth: str | None,
    no_auth: bool,
    allowed_hosts: tuple[str, ...],
    flower_url: str | None,
    api_tokens: tuple[str, ...],
    api_token_files: tuple[str, ...],
    url_prefix: str,
) -> int:
    """Serve the dashboard: runs, their graphs with live node states, actions, flows to
    start, workers (see docs/ui.md). Needs the `ui` extra (Tornado)."""
    ctx = click.get_current_context()
    require_tornado()  # before anything else: the one thing a plain install lacks
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: expected 0 to 65535")
    # malformed credentials, hosts, or an exposed address without either credentials or
    # --no-auth fail before the app loads
    allowed = parse_allowed_hosts([*allowed_hosts, os.environ.get(ENV_ALLOWED_HOSTS, "")])
    check_exposure(host, parse_basic_auth(basic_auth), no_auth)
    from_env = os.environ.get(ENV_API_TOKEN, "").split()
    tokens = ApiTokens.parse([*api_tokens, *from_env], api_token_files)
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
            allowed_hosts=allowed,
            no_auth=no_auth,
            api_tokens=tokens,
            out=sys.stderr,
        )
    except OSError as exc:  # the port is taken, the address is not this host's
        raise UsageError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from exc
    return 0
