"""The checks of the names a flow is built with: flow names and node ids."""

from __future__ import annotations

from typing import Any

from ..errors import GraphDefinitionError
from ..keys import NODE_ID_RE


def check_flow_name(name: Any) -> str:
    """A flow name: a non-empty string without control characters, at most 200 long."""
    if (
        not isinstance(name, str)
        or not name.strip()
        or len(name) > 200
        or any(ord(c) < 32 for c in name)
    ):
        raise GraphDefinitionError(
            f"invalid flow name {name!r}: use a non-empty string of at most 200 printable "
            "characters, e.g. 'etl'"
        )
    return name


def check_node_id(node_id: str, what: str) -> None:
    if not isinstance(node_id, str) or not NODE_ID_RE.match(node_id):
        raise GraphDefinitionError(
            f"invalid node id {node_id!r} for {what}: use a Python-identifier-like name "
            "(letters, digits, '_', '.', '-'; no spaces, colons or braces)"
        )
