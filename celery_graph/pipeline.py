"""Build a graph from a declarative TOML file.

```toml
name = "etl"

[flow]                                   # nested blocks, or: edges = [["a", "b"], ...]
sequence = ["extract", { parallel = ["transform", "audit"] }, "load"]

[[node]]
id = "extract"
task = "myapp.tasks.extract"             # a @task, or any registered Celery task
args = { n = 3 }                         # bound keyword arguments
queue = "cpu"                            # optional: queue, priority
retries = 2                              # optional: retry the node on any error

[[node]]
id = "transform"
task = "myapp.tasks.transform"
```

``load(path)`` returns the Flow; the task modules must be importable (``-A`` / imports).
Every mistake raises PipelineError naming the file, line and field.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from celery import current_app

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

# through the package's public names, as a user's module does: the first one read
# connects the worker attachment (celery_graph/__init__.py), so a pipeline's node()s
# attach its app like @task does in any module
from celery_graph import Flow, Parallel, Sequence, TaskNode, Workflow, node

from .errors import GraphDefinitionError

NODE_FIELDS = {"id", "task", "args", "queue", "priority", "retries", "retry_delay"}


class PipelineError(GraphDefinitionError):
    """A pipeline file is malformed; the message names the file, line and field."""


class _Source:
    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, pattern: str, start: int = 0) -> int:
        """1-based number of the first line at or after ``start`` matching ``pattern``."""
        rx = re.compile(pattern)
        for i in range(start, len(self.lines)):
            if rx.search(self.lines[i]):
                return i + 1
        return start + 1 if start else 0

    def node_line(self, index: int) -> int:
        seen = -1
        for i, line in enumerate(self.lines):
            if re.match(r"\s*\[\[\s*node\s*\]\]", line):
                seen += 1
                if seen == index:
                    return i + 1
        return 0

    def error(self, line: int, field: str, message: str) -> PipelineError:
        where = f"{self.path}:{line}" if line else str(self.path)
        return PipelineError(f"{where}: {field}: {message}")


def load(path: str | Path, app: Any = None) -> Flow:
    """Read a pipeline file and return its Flow."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read the pipeline file: {exc.strerror}") from exc
    src = _Source(path, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None) or _line_from(str(exc))
        raise src.error(line, "syntax", str(exc).split(" (at line")[0]) from exc
    return _build(src, data, app)


def _line_from(message: str) -> int:
    found = re.search(r"line (\d+)", message)
    return int(found.group(1)) if found else 0


def _build(src: _Source, data: dict[str, Any], app: Any) -> Flow:
    unknown = set(data) - {"name", "flow", "edges", "node"}
    if unknown:
        key = sorted(unknown)[0]
        raise src.error(
            src.line_of(rf"^\s*\[?{re.escape(key)}\b"),
            key,
            "unknown top-level key (expected name, flow, edges, [[node]])",
        )
    raw_nodes = data.get("node")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise src.error(0, "node", "the file declares no [[node]] tables")
    nodes: dict[str, TaskNode] = {}
    for i, raw in enumerate(raw_nodes):
        start = src.node_line(i)
        built = _node(src, raw, start, app)
        if built.id in nodes:
            raise src.error(
                src.line_of(r"^\s*id\s*=", start - 1 if start else 0),
                "id",
                f"duplicate node id {built.id!r}",
            )
        nodes[built.id] = built
    has_flow, has_edges = "flow" in data, "edges" in data
    if has_flow == has_edges:
        raise src.error(0, "flow", "give exactly one of [flow] (nested blocks) or edges = [...]")
    if has_edges:
        return _from_edges(src, data["edges"], nodes, data.get("name", src.path.stem))
    flow_line = src.line_of(r"^\s*\[flow\]|^\s*flow\s*=")
    # named like the edges form's workflow; a lone node becomes a one-node graph
    return _block(src, data["flow"], nodes, flow_line, "flow").with_name(
        str(data.get("name", src.path.stem))
    )


def _node(src: _Source, raw: Any, start: int, app: Any) -> TaskNode:
    if not isinstance(raw, dict):
        raise src.error(start, "node", "each [[node]] must be a table")
    extra = set(raw) - NODE_FIELDS
    if extra:
        key = sorted(extra)[0]
        raise src.error(
            src.line_of(rf"^\s*{re.escape(key)}\s*=", max(start - 1, 0)),
            key,
            f"unknown node field (allowed: {', '.join(sorted(NODE_FIELDS))})",
        )
    for field in ("id", "task"):
        if not isinstance(raw.get(field), str) or not raw[field]:
            raise src.error(start, field, f"every [[node]] needs a string {field!r}")

    def line(field: str) -> int:
        return src.line_of(rf"^\s*{field}\s*=", max(start - 1, 0))

    current = app or current_app
    task = current.tasks.get(raw["task"])
    if task is None:
        raise src.error(
            line("task"), "task", f"no registered task {raw['task']!r}; import its module (-A APP)"
        )
    args = raw.get("args", {})
    if not isinstance(args, dict):
        raise src.error(line("args"), "args", "must be a table of keyword arguments")
    try:
        fn = getattr(task.run, "__wrapped__", None)
        if fn is not None:  # a @task: its graph node
            built = TaskNode(fn, task.name, fn.__name__).bind(id=raw["id"], **args)
        else:
            built = node(task, id=raw["id"], **args)
    except GraphDefinitionError as exc:
        raise src.error(line("args") or start, "args", str(exc)) from exc
    routing = {k: raw[k] for k in ("queue", "priority") if k in raw}
    if routing:
        built = dataclasses.replace(
            built, options=tuple(sorted({**dict(built.options), **routing}.items()))
        )
    if "retries" in raw:
        retries, delay = raw["retries"], raw.get("retry_delay", 1.0)
        if not isinstance(retries, int) or retries < 0:
            raise src.error(line("retries"), "retries", "must be a whole number >= 0")
        if not isinstance(delay, (int, float)) or delay < 0:
            raise src.error(line("retry_delay"), "retry_delay", "must be a number >= 0")
        built = built.with_retries(retries, delay=float(delay))
    return built


def _ref(src: _Source, name: Any, nodes: dict[str, TaskNode], line: int, field: str) -> TaskNode:
    if not isinstance(name, str) or name not in nodes:
        raise src.error(
            src.line_of(re.escape(repr(name).strip("'")), max(line - 1, 0)) or line,
            field,
            f"{name!r} is not a declared node id",
        )
    return nodes[name]


def _block(src: _Source, block: Any, nodes: dict[str, TaskNode], line: int, field: str) -> Flow:
    if isinstance(block, str):
        return _ref(src, block, nodes, line, field)
    if not isinstance(block, dict):
        raise src.error(line, field, f"expected a node id or a block, got {block!r}")
    kinds = [k for k in ("sequence", "parallel") if k in block]
    if len(kinds) != 1 or set(block) - {"sequence", "parallel", "name"}:
        raise src.error(
            line, field, 'a block is {sequence = [...]} or {parallel = [...], name = "..."}'
        )
    kind = kinds[0]
    items = block[kind]
    if not isinstance(items, list) or not items:
        raise src.error(line, f"{field}.{kind}", "must be a non-empty list")
    parts = tuple(
        _block(src, item, nodes, line, f"{field}.{kind}[{i}]") for i, item in enumerate(items)
    )
    if kind == "sequence":
        return parts[0] if len(parts) == 1 else Sequence(parts)
    group = Parallel(parts)
    if "name" in block:
        try:
            group = group.named(block["name"])
        except GraphDefinitionError as exc:
            raise src.error(line, f"{field}.name", str(exc)) from exc
    return group


def _from_edges(src: _Source, edges: Any, nodes: dict[str, TaskNode], name: str) -> Flow:
    line = src.line_of(r"^\s*edges\s*=")
    if not isinstance(edges, list):
        raise src.error(line, "edges", "must be a list of [from, to] pairs")
    wf = Workflow(name)
    linked: set[str] = set()
    for i, pair in enumerate(edges):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise src.error(line, f"edges[{i}]", f"expected [from, to], got {pair!r}")
        a = _ref(src, pair[0], nodes, line, f"edges[{i}]")
        b = _ref(src, pair[1], nodes, line, f"edges[{i}]")
        wf.add(a >> b)
        linked.update((a.id, b.id))
    for node_id, n in nodes.items():
        if node_id not in linked:
            wf.add(n)
    return wf
