"""The dashboard: every run's graph with live node states, the runs' history, actions on
a run, the flows to start and the workers, in the browser.

``python -m celery_graph.ui -A proj.celery`` serves it on http://127.0.0.1:5580/;
``serve(app, host, port, ...)`` is the same from Python, ``start(app)`` serves it from a
background thread. It needs Tornado: ``pip install 'celery-graph[ui]'``. See docs/ui.md.

The names below load their modules on first use (PEP 562): the command line imports
``ui.flows`` and ``ui.listing`` without the web server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .connections import Limits
    from .flows import FlowRegistry
    from .guard import LoginThrottle
    from .server import DEFAULT_PORT, Dashboard, Server, serve, start

__all__ = [
    "DEFAULT_PORT",
    "Dashboard",
    "FlowRegistry",
    "Limits",
    "LoginThrottle",
    "Server",
    "serve",
    "start",
]

_SOURCES = {
    "Limits": "connections",
    "FlowRegistry": "flows",
    "LoginThrottle": "guard",
    "DEFAULT_PORT": "server",
    "Dashboard": "server",
    "Server": "server",
    "serve": "server",
    "start": "server",
}


def __getattr__(name: str) -> Any:
    if name in _SOURCES:
        return getattr(importlib.import_module(f"{__name__}.{_SOURCES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
