"""``python -m celery_graph.ui -A APP [OPTIONS]``: the same as ``celery-graph -A APP ui
[OPTIONS]`` (one command, one set of options; see docs/ui.md)."""

from __future__ import annotations

import sys

from ..cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    """Serve the dashboard as ``celery-graph ui`` does; returns the exit status."""
    return cli_main(["ui", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
