"""``child(flow, **inputs)``: a node starts a flow as a child run and takes its result."""

from __future__ import annotations

from typing import Any

from ..errors import MissingParameterError, NotAGraphTaskError
from ..model import Child
from .values import Flow


def child(flow: Flow[Any], **inputs: Any) -> Child:
    """Returned by a node, starts ``flow`` as a run of its own with ``inputs`` (its own
    id, recorded as the child of this run and node, under the same key prefix); the
    node's result becomes the child run's result when it ends, and its failure fails the
    node. Nothing blocks while the child runs (no worker holds the node), and cancelling
    the parent cancels its children::

        @task
        def per_customer(customer):
            return child(invoice_flow, customer=customer)

    The flow and its inputs are checked where the node returns this: a missing or
    unknown input fails the node, naming it.
    """
    if not isinstance(flow, Flow):
        raise NotAGraphTaskError(f"child() takes a celery-graph flow, got {flow!r}")
    spec = flow.compile()
    spec.check_inputs(inputs)
    spec.check_known_inputs(inputs)
    limit = spec.concurrency
    if limit is not None and limit.key is not None and limit.key not in inputs:
        raise MissingParameterError(
            f"child(): the flow's concurrency limit is per run input {limit.key!r}, and "
            f"this child has no input {limit.key!r}: pass it (child(flow, {limit.key}=...))"
        )
    return Child(spec, dict(inputs), flow.flow_name)
