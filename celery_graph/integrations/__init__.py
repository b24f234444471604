"""Tracing and error reporting: celery-graph's run, node and flow on the spans of
OpenTelemetry's Celery instrumentation and on the events of Sentry's Celery integration
(docs/observability.md).

Nothing here imports either SDK, and nothing is active until an SDK is: :func:`enable`
(run by ``celery_graph.install(app)``) registers one observer per SDK with the executor;
at the start of each node message, each looks whether its SDK is loaded and active in
that process (``CeleryInstrumentor`` instrumented; a Sentry client with its Celery
integration) and does nothing when it is not.
"""

from __future__ import annotations

import threading

from ..executor.observe import add_observer
from . import opentelemetry, sentry
from .names import FLOW, NODE, RUN_ID

_lock = threading.Lock()
_enabled = False


def enable() -> None:
    """Show celery-graph's run, node and flow to the tracers and error reporters that are
    active when a node runs (idempotent). ``celery_graph.install(app)`` calls it."""
    global _enabled
    with _lock:
        if _enabled:
            return
        _enabled = True
    add_observer(opentelemetry.observe)
    add_observer(sentry.observe)


__all__ = ["FLOW", "NODE", "RUN_ID", "enable"]
