"""The flows an app offers on the dashboard, to start from the page.

An app lists them in its configuration, by name::

    app.conf.graph_ui_flows = {
        "etl": "proj.flows:etl",          # MODULE:ATTR of a flow, imported at start-up
        "report": report_flow,            # or the flow itself
    }

The name is what the dashboard shows and filters by: a run started from the page records
it (``flow`` in the run record), and a run started elsewhere from one of these graphs
(``flow.apply_async()``, Celery beat with ``flow.s()``) is named after it by its graph id.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..apploader import import_flow
from ..client import GraphRun, submit_spec
from ..dsl import Flow, TaskNode
from ..errors import ConfigurationError
from ..model import GraphSpec
from ..state import RunRow

SETTING = "graph_ui_flows"
_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,100}$")


@dataclass(frozen=True)
class Input:
    """A run input the page asks for: a parameter that run inputs may fill."""

    name: str
    required: bool
    default: str | None  # repr of the default, for the form's placeholder
    nodes: tuple[str, ...]  # the nodes whose parameter it fills

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "required": self.required,
            "default": self.default,
            "nodes": list(self.nodes),
        }


@dataclass(frozen=True)
class RegisteredFlow:
    name: str
    ref: str  # where it came from: MODULE:ATTR, or the flow's repr
    flow: Flow
    spec: GraphSpec
    inputs: tuple[Input, ...]

    def as_json(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "name": self.name,
            "ref": self.ref,
            "graph_id": spec.graph_id,
            "nodes": len(spec.nodes),
            "roots": list(spec.roots),
            "sinks": list(spec.sinks),
            "inputs": [i.as_json() for i in self.inputs],
        }


def flow_inputs(flow: Flow, spec: GraphSpec) -> tuple[Input, ...]:
    """The parameters a run input may fill: required ones (nothing else fills them) and
    optional ones (a default would be used), each with the nodes that take it."""
    defaults: dict[tuple[str, str], Any] = {}
    for part in flow.walk():
        if isinstance(part, TaskNode):
            try:
                params = inspect.signature(part.fn).parameters
            except (TypeError, ValueError):  # a callable without a signature
                continue
            for name, param in params.items():
                if param.default is not inspect.Parameter.empty:
                    defaults[(part.id, name)] = param.default
    found: dict[str, dict[str, Any]] = {}
    for node in spec.nodes.values():
        taken = set(node.kwargs) | set(node.pull) | set(node.groups)
        if node.map_param:
            taken.add(node.map_param)
        names = node.params[1:] if node.context else node.params
        for name in names:
            if name in taken:
                continue
            entry = found.setdefault(name, {"required": False, "nodes": [], "default": None})
            entry["nodes"].append(node.id)
            if name in node.needs:
                entry["required"] = True
            elif (node.id, name) in defaults and entry["default"] is None:
                entry["default"] = repr(defaults[(node.id, name)])
    return tuple(
        Input(name, e["required"], None if e["required"] else e["default"], tuple(e["nodes"]))
        for name, e in sorted(found.items(), key=lambda kv: (not kv[1]["required"], kv[0]))
    )


class FlowRegistry:
    """The app's ``graph_ui_flows``, imported and compiled once."""

    def __init__(self, app: Any, flows: Mapping[str, str | Flow] | None = None) -> None:
        self.app = app
        configured = flows if flows is not None else (app.conf.get(SETTING) or {})
        if not isinstance(configured, Mapping):
            raise ConfigurationError(
                f"{SETTING} must be a dict of name -> 'MODULE:ATTR' (or a flow), got "
                f"{type(configured).__name__}"
            )
        self.flows: dict[str, RegisteredFlow] = {}
        self._by_graph: dict[str, str] = {}
        for name, target in configured.items():
            what = f"{SETTING}[{name!r}]"
            if not isinstance(name, str) or not _NAME.match(name):
                raise ConfigurationError(
                    f"{what}: a flow name is 1 to 100 letters, digits, '_', '.', ':' or '-'"
                )
            if isinstance(target, Flow):
                flow, ref = target, repr(target)
            elif isinstance(target, str):
                flow, ref = import_flow(target, what), target
            else:
                raise ConfigurationError(
                    f"{what}: expected 'MODULE:ATTR' or a flow, got {type(target).__name__}"
                )
            try:
                spec = flow.compile()
            except Exception as exc:
                raise ConfigurationError(f"{what}: the flow does not compile: {exc}") from exc
            self.flows[name] = RegisteredFlow(name, ref, flow, spec, flow_inputs(flow, spec))
            self._by_graph.setdefault(spec.graph_id, name)

    def get(self, name: str) -> RegisteredFlow | None:
        return self.flows.get(name)

    def name_of(self, row: RunRow) -> str | None:
        """A run's flow: the name its record holds, else the registered flow of its graph."""
        return row.fields.get("flow") or self._by_graph.get(row.fields.get("graph", ""))

    def name_of_graph(self, graph_id: str) -> str | None:
        return self._by_graph.get(graph_id)

    def start(
        self,
        name: str,
        inputs: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> GraphRun:
        """Start a run of the registered flow ``name``, recording its name in the run."""
        entry = self.flows[name]
        return submit_spec(
            entry.spec,
            inputs,
            self.app,
            idempotency_key=idempotency_key,
            deadline=deadline,
            extra_fields={"flow": name},
        )
