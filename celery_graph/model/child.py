"""A child run as a value: what a node returns with ``child(flow, **inputs)``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from .spec import GraphSpec


@dataclass(frozen=True)
class Child:
    """Start ``spec`` as a run of its own with ``inputs``, as the child of the node that
    returned this; the node's result becomes the child run's result."""

    spec: GraphSpec
    inputs: dict[str, Any] = field(default_factory=dict)
    flow_name: str | None = None


def child_run_id(parent_run_id: str, node_id: str) -> str:
    """The child run of node ``node_id`` of run ``parent_run_id``: always the same id, so a
    node delivered again finds the child it started instead of starting another."""
    return hashlib.sha256(f"child:{parent_run_id}:{node_id}".encode()).hexdigest()[:32]
