"""``result_of(node)``: an upstream node's result as a bound value, for a parameter that
is not named like the node."""

from __future__ import annotations

from typing import Any

from ..errors import GraphDefinitionError
from ..model import ResultOf
from .values import Parallel, TaskNode, check_node_id


def result_of(source: TaskNode[..., Any] | Parallel | str) -> ResultOf:
    """The result of ``source`` (a node, a named group or the id of either), bound to a
    parameter of a node downstream of it::

        report = load >> send_report.bind(summary=result_of(load))

    ``send_report`` receives ``load``'s result as ``summary``, as a parameter named
    ``load`` would (a named group gives the list of its members' results, a map node the
    list of its items' results, a skipped branch ``None``). Like any bound value it wins
    over run inputs and defaults, and over an upstream node named like the parameter.
    ``source`` must be upstream of the bound node: the graph is refused before anything
    is sent otherwise. The node's message carries the id, never the value.
    """
    if isinstance(source, TaskNode):
        return ResultOf(source.id)
    if isinstance(source, Parallel):
        if source.name is None:
            raise GraphDefinitionError(
                f"result_of({source!r}): a group needs a name to be read as a whole; "
                "use .named('...') on it, or result_of() one of its members"
            )
        return ResultOf(source.name)
    if isinstance(source, str):
        check_node_id(source, "result_of()")
        return ResultOf(source)
    raise GraphDefinitionError(
        f"result_of() takes a node, a named group or a node id, got {source!r}"
    )
