"""The dashboard: every run's graph with live node states, the runs' history, actions on
a run, the flows to start and the workers, in the browser.

``python -m celery_graph.ui -A proj.celery`` serves it on http://127.0.0.1:5580/;
``serve(app, host, port, ...)`` is the same from Python, ``start(app)`` serves it from a
background thread. It needs Tornado: ``pip install 'celery-graph[ui]'``. See docs/ui.md.
"""

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
