"""Node spans of OpenTelemetry's Celery instrumentation (``CeleryInstrumentor``, from
``opentelemetry-instrumentation-celery``), completed by celery-graph.

The instrumentation already gives each node message a span (``run/<task name>``), a child
of the span that sent the message, so a run is one trace. While a node runs, that span is
the current one; celery-graph adds to it:

- the attributes ``celery_graph.run_id``, ``celery_graph.node`` and, when the run has one,
  ``celery_graph.flow``;
- for a join, a link to the span of every predecessor (up to ``LINK_LIMIT``): the span
  of the predecessor that released the join stays its parent, the others would otherwise
  not show. Each node keeps its span's ``traceparent`` in the run's node state, and the
  join reads them, both in the begin.lua call every node makes anyway.

Active when the instrumentation is (``CeleryInstrumentor().instrument()``, or the
``opentelemetry-instrument`` launcher) and the node's span is recording (sampled); else
a node costs one dictionary look-up more. Span links added after a span starts need
opentelemetry-sdk 1.23 or newer.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from ..protocol import NodeMessage
from .names import FLOW, NODE, RUN_ID

INSTRUMENTATION = "opentelemetry.instrumentation.celery"
TRACEPARENT = "traceparent"


def instrumented() -> bool:
    """True when Celery's OpenTelemetry instrumentation is on in this process (never
    imports it)."""
    module = sys.modules.get(INSTRUMENTATION)
    instrumentor = getattr(module, "CeleryInstrumentor", None)
    # a singleton: constructing it returns the instance that instrument() switched on
    return bool(instrumentor is not None and instrumentor().is_instrumented_by_opentelemetry)


def observe(task: Any, message: NodeMessage) -> NodeSpan | None:
    """The node's span, with its run and node set, when the instrumentation is on and
    the span records; else None."""
    if not instrumented():
        return None
    from opentelemetry import trace

    span = trace.get_current_span()
    if not span.is_recording():
        return None
    span.set_attribute(RUN_ID, message.run_id)
    span.set_attribute(NODE, message.node_id)
    return NodeSpan(span)


class NodeSpan:
    """The span of one node message (an observation: executor/observe.py)."""

    def __init__(self, span: Any) -> None:
        self.span = span

    def trace(self) -> str:
        """The span's W3C traceparent, kept for the joins downstream."""
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, trace.set_span_in_context(self.span))
        return carrier.get(TRACEPARENT, "")

    def wants_links(self) -> bool:
        return True

    def begun(self, flow: str | None, links: Mapping[str, str]) -> None:
        if flow:
            self.span.set_attribute(FLOW, flow)
        if not links:
            return
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        propagator = TraceContextTextMapPropagator()
        for pred, traceparent in links.items():
            context = propagator.extract({TRACEPARENT: traceparent})
            linked = trace.get_current_span(context).get_span_context()
            if linked.is_valid:
                self.span.add_link(linked, {NODE: pred})
