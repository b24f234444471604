"""``python -m celery_graph.ui -A APP``: serve the dashboard (see docs/ui.md)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import IO

from ..apploader import load_app
from ..errors import CeleryGraphError
from ..keys import check_prefix
from ..state import state_for
from .server import DEFAULT_PORT, UsageError, parse_basic_auth, serve

EXAMPLES = """\
examples:
  python -m celery_graph.ui -A proj.celery
  python -m celery_graph.ui -A proj.celery --port 8080 --flower-url http://localhost:5555
  CELERY_GRAPH_UI_BASIC_AUTH=admin:s3cret python -m celery_graph.ui -A proj --host 0.0.0.0
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m celery_graph.ui",
        description="Serve the celery-graph dashboard: runs, their graphs with live node "
        "states, actions, flows to start, workers.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-A",
        "--app",
        default=os.environ.get("CELERY_APP"),
        help="the Celery app, as for `celery -A` (default: $CELERY_APP)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 exposes it)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)",
    )
    parser.add_argument(
        "--basic-auth",
        default=os.environ.get("CELERY_GRAPH_UI_BASIC_AUTH"),
        metavar="USER:PASSWORD",
        help="ask for these credentials (several separated by commas; default "
        "$CELERY_GRAPH_UI_BASIC_AUTH, which keeps the password out of `ps`)",
    )
    parser.add_argument(
        "--flower-url",
        default=os.environ.get("CELERY_GRAPH_UI_FLOWER_URL"),
        metavar="URL",
        help="link nodes to their tasks in this Flower",
    )
    parser.add_argument(
        "--url-prefix",
        default="",
        metavar="PATH",
        help="serve under this path, behind a reverse proxy (e.g. /graphs)",
    )
    parser.add_argument("--redis-url", help="the graph Redis (default: the app's setting)")
    parser.add_argument("--key-prefix", help="the key prefix (default: the app's setting)")
    return parser


def main(argv: list[str] | None = None, err: IO[str] | None = None) -> int:
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        if not 0 <= args.port <= 65535:
            raise UsageError(f"--port {args.port}: expected 0 to 65535")
        # malformed values fail before the app loads, and never reach its configuration
        parse_basic_auth(args.basic_auth)
        if args.key_prefix:
            check_prefix(args.key_prefix)
        app = load_app(args.app)
        if args.redis_url:
            app.conf.graph_redis_url = args.redis_url
        if args.key_prefix:
            app.conf.graph_key_prefix = args.key_prefix
        state_for(app)  # malformed settings fail here, in one line
        serve(
            app,
            args.host,
            args.port,
            basic_auth=args.basic_auth,
            flower_url=args.flower_url,
            url_prefix=args.url_prefix,
            out=err,
        )
    except (UsageError, CeleryGraphError, OSError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        err.write(f"celery-graph ui: error: {message}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
