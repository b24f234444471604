"""Tags on the events of Sentry's Celery integration (``sentry-sdk`` 2 with
``CeleryIntegration``) for what a node reports: ``celery_graph.run_id``,
``celery_graph.node`` and, when the run has one, ``celery_graph.flow``.

The integration runs each task in a scope of its own (an isolation scope); celery-graph
sets the tags on it while the node runs, so an error the node raises, and anything else
it reports meanwhile, carries them, and the next task does not.

Active when a Sentry client is and has its Celery integration (``sentry_sdk.init(...,
integrations=[CeleryIntegration()])``, or found by its auto-enabling); else a node costs
one dictionary look-up more.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from ..protocol import NodeMessage
from .names import FLOW, NODE, RUN_ID

INTEGRATION = "celery"  # CeleryIntegration.identifier


def sdk() -> Any:
    """The ``sentry_sdk`` module when a client with the Celery integration is active in
    this process, else None (never imports it)."""
    module = sys.modules.get("sentry_sdk")
    get_client = getattr(module, "get_client", None)  # sentry-sdk 2
    if get_client is None:
        return None
    client = get_client()
    if not client.is_active() or client.get_integration(INTEGRATION) is None:
        return None
    return module


def observe(task: Any, message: NodeMessage) -> NodeTags | None:
    """Tag the task's scope with the node's run and node, when Sentry is active."""
    found = sdk()
    if found is None:
        return None
    found.set_tag(RUN_ID, message.run_id)
    found.set_tag(NODE, message.node_id)
    return NodeTags(found)


class NodeTags:
    """The tags of one node message's scope (an observation: executor/observe.py)."""

    def __init__(self, sdk: Any) -> None:
        self.sdk = sdk

    def trace(self) -> str:
        return ""

    def wants_links(self) -> bool:
        return False

    def begun(self, flow: str | None, links: Mapping[str, str]) -> None:
        if flow:
            self.sdk.set_tag(FLOW, flow)
