"""What the JSON API answers: a run with every node's state, one node in detail, the
workers, and the actions on a run. Plain functions of the app's ``State``; the web layer
(``server.py``) only routes to them.

``run_json`` holds the same fields as ``celery-graph status --json`` (``run_id``, ``state``,
``graph_id``, ``created``, ``finished``, ``error``, ``nodes``), plus what the page needs.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from dataclasses import asdict
from typing import Any
from urllib.parse import quote

from ..client import GraphRun
from ..codec import decode_value
from ..drawing.layout import layout
from ..errors import RunNotResumable
from ..model import (
    FINAL_STATES,
    NODE_ATTRS,
    GraphSpec,
    NodeRecord,
    NodeStatus,
    RunStatus,
    record_field,
    shown_state,
)
from ..model.resume import resume_frontier
from ..model.status import HISTORY
from ..protocol import task_id_for
from ..state import RunRow, State
from ..worker.heartbeat import live_workers
from .errors import ActionRefused, BadRequest, NotFound
from .flows import FlowRegistry

MAX_KEY_CHARS = 1000  # of an idempotency key sent to the API
PREVIEW_BYTES = 64 * 1024  # a larger result is not read for a preview
PREVIEW_CHARS = 4000
ITEMS_SHOWN = 200  # items of a map listed in a node's detail
FOLD_OVER = 2000  # a run of more nodes is answered folded (Views.run)
LAYOUTS_CACHED = 64


def _items(fields: dict[str, str], spec: GraphSpec) -> dict[str, dict[str, Any]]:
    """For every map node that expanded: its item count and the items' states."""
    out: dict[str, dict[str, Any]] = {}
    for nid in spec.maps:
        count = fields.get(f"{nid}:items")
        if count is not None:
            out[nid] = {"count": int(count), "states": {}}
    if not out:
        return out
    counters: dict[str, Counter[str]] = {nid: Counter() for nid in out}
    for key, value in fields.items():
        head, sep, tail = key.partition("#")
        if sep and head in counters and tail.endswith(":state"):
            counters[head][value] += 1
    for nid, counter in counters.items():
        out[nid]["states"] = dict(counter)
    return out


class Encoded(str):
    """An answer already encoded as JSON text (sent as it is)."""


class Views:
    """The API's answers for one app."""

    def __init__(
        self, app: Any, state: State, registry: FlowRegistry, flower_url: str | None = None
    ) -> None:
        self.app = app
        self.state = state
        self.registry = registry
        self.flower_url = flower_url.rstrip("/") if flower_url else None
        self._layouts: dict[str, dict[str, Any]] = {}
        self._encoded: dict[str, Encoded] = {}  # the same drawings as JSON text
        self._lock = threading.Lock()

    # -- reading -------------------------------------------------------------------------

    def _status(
        self, run_id: str, only: list[str] | None = None
    ) -> tuple[dict[str, str], GraphSpec, dict[str, str], RunStatus]:
        """The run's record, graph, node-state fields and status: of every node, or of the
        nodes ``only`` (and the steps after the graph) whatever the size of the run."""
        runs = self.state.runs
        record = runs.record(run_id)  # RunNotFound names the id and the prefix
        spec = runs.graph_of(run_id, record)  # no nodes for a run that never started
        if only is None:
            fields = runs.node_fields(run_id)
            leases = runs.leases(run_id)
            order = spec.order
        else:
            ids = [*only, *spec.roles]
            fields = runs.fields_of(run_id, [f"{n}:{a}" for n in ids for a in NODE_ATTRS])
            # and the attempts each one's history keeps (attempt.lua), one per attempt made
            history = [
                f"{n}{HISTORY}{a}"
                for n in ids
                for a in range(1, NodeRecord.parse(fields.get(f"{n}:run")).attempts + 1)
            ]
            fields.update(runs.fields_of(run_id, history))
            leases = runs.leases_of(run_id, ids)
            order = tuple(only)
        status = RunStatus.from_state(
            run_id,
            record,
            fields,
            order,
            leases,
            runs.time(),
            spec.roles,
            runs.position(run_id, record),
        )
        return record, spec, fields, status

    def run(self, run_id: str) -> dict[str, Any]:
        """The run page's answer. A run of more than FOLD_OVER nodes is answered folded:
        its counts are the ones the scripts keep, ``nodes`` holds the nodes drawn as boxes
        of their own, and ``groups`` each group box's counts by state (its members' states
        read in a few HMGETs); ``folded`` says so."""
        record = self.state.runs.record(run_id)
        # (a run started by a version that kept no counts is read whole, and so is a
        # record whose node count is corrupt: the whole read says what is wrong with it)
        size = record.get("nodes") or "0"
        if size.isdigit() and int(size) > FOLD_OVER and record.get("counted"):
            return self._folded(run_id)
        record, spec, fields, status = self._status(run_id)
        data = status.as_json()  # the fields of `celery-graph status --json`
        return self._page(data, run_id, record, spec, fields, status, data["counts"], False)

    def _page(
        self,
        data: dict[str, Any],
        run_id: str,
        record: dict[str, str],
        spec: GraphSpec,
        fields: dict[str, str],
        status: RunStatus,
        counts: dict[str, int],
        folded: bool,
    ) -> dict[str, Any]:
        """``data`` (the status's JSON) with what the run page shows of any run, whole or
        folded: its flow and inputs, the progress bar, the node items and the actions."""
        data.update(
            flow=self.registry.name_of(RunRow(run_id, record)),
            inputs=record_field(run_id, record, "inputs", json.loads) or {},
            deadline=record_field(run_id, record, "deadline", float),
            resumed=record_field(run_id, record, "resumed", float),
            now=status.now,
            progress={
                "done": counts.get("succeeded", 0) + counts.get("skipped", 0),
                "failed": counts.get("failed", 0),
                "total": len(spec.order),
                # each part of the bar: what succeeded, was skipped, failed, never ran
                "parts": {
                    s: counts.get(s, 0)
                    for s in ("succeeded", "skipped", "failed", "upstream_failed", "cancelled")
                },
            },
            stalled=status.stalled(),  # (folded: of the nodes drawn alone)
            items=_items(fields, spec),
            actions={
                "cancel": status.state in ("running", "queued"),
                "resume": status.state in ("failed", "cancelled") and not record.get("unstarted"),
            },
            flower=self.flower_url,
            folded=folded,
        )
        return data

    def _folded(self, run_id: str) -> dict[str, Any]:
        drawing = self.graph(run_id)
        solo = [b["id"] for b in drawing["nodes"] if b["kind"] != "group"]
        groups = {b["id"]: b["members"] for b in drawing["nodes"] if b["kind"] == "group"}
        record, spec, fields, status = self._status(run_id, solo)
        runs = self.state.runs
        summary = RunStatus.summarised(run_id, record, runs.counts(run_id))
        counts = summary.counts()
        # the members of every group but the largest are read; the largest one's counts
        # are the run's less the others' and the lone nodes' (a wide fan-out: no read)
        largest = max(groups, key=lambda g: len(groups[g]), default=None)
        members = [m for gid, ms in groups.items() if gid != largest for m in ms]
        states = runs.fields_of(run_id, [f"{m}:state" for m in members])
        group_counts: dict[str, dict[str, int]] = {}
        rest: Counter[str] = Counter(counts)
        rest.subtract(n.state for n in status.nodes.values())
        for gid, ms in groups.items():
            if gid == largest:
                continue
            tally: Counter[str] = Counter()
            for m in ms:
                tally[shown_state(states.get(f"{m}:state"), status.state)] += 1
            group_counts[gid] = dict(tally)
            rest.subtract(tally)
        if largest is not None:
            # (counts read a moment apart from the nodes' states may differ by a node in
            # motion: never below zero)
            group_counts[largest] = {s: n for s, n in rest.items() if n > 0}
        data = status.as_json()
        # the kept counts; every node's children, from the run record; each group's counts
        data.update(counts=counts, children=summary.children, groups=group_counts)
        return self._page(data, run_id, record, spec, fields, status, counts, True)

    def graph(self, run_id: str) -> dict[str, Any]:
        """The drawing of the run's graph (one per graph id, computed once)."""
        record = self.state.runs.record(run_id)
        graph_id = record["graph"]
        if record.get("unstarted"):  # no graph ran: nothing to draw
            return layout(self.state.runs.graph_of(run_id, record))
        with self._lock:
            cached = self._layouts.get(graph_id)
        if cached is None:
            cached = layout(self.state.graphs.load(graph_id))
            with self._lock:
                self._layouts[graph_id] = cached
                while len(self._layouts) > LAYOUTS_CACHED:
                    gone = next(iter(self._layouts))
                    self._layouts.pop(gone)
                    self._encoded.pop(gone, None)
        return cached

    def graph_json(self, run_id: str) -> Encoded:
        """:meth:`graph` as JSON text, encoded once per graph: the drawing of a 100,000-node
        graph is megabytes, and encoding it at every page load took most of the load."""
        drawing = self.graph(run_id)
        graph_id = drawing["graph_id"]
        with self._lock:
            text = self._encoded.get(graph_id)
        if text is None:
            text = Encoded(json.dumps(drawing, default=str))
            with self._lock:
                if graph_id in self._layouts:  # (a drawing not cached is not kept encoded)
                    self._encoded[graph_id] = text
        return text

    def node(self, run_id: str, node_id: str) -> dict[str, Any]:
        """One node in detail: its fields and its items' only, whatever the run's size."""
        spec = self.state.runs.graph_of(run_id)
        if node_id not in spec.nodes:
            raise NotFound(
                f"run {run_id} has no node {node_id!r} (nodes: "
                f"{', '.join(spec.order[:20])}{' ...' if len(spec.order) > 20 else ''})"
            )
        node = spec.nodes[node_id]
        _record, spec, fields, status = self._status(run_id, [node_id])
        if node.map_source:
            units = int(fields.get(f"{node_id}:items", 0))
            shown = [f"{node_id}#{i}" for i in range(min(units, ITEMS_SHOWN))]
            fields.update(
                self.state.runs.fields_of(
                    run_id, [f"{u}:{a}" for u in shown for a in ("state", "run")]
                )
            )
        ns = status.nodes[node_id]
        error = ns.error
        if error is None and status.error and status.error.get("node") == node_id:
            error = status.error
        task_id = task_id_for(run_id, node_id)
        data: dict[str, Any] = {
            "run_id": run_id,
            "node_id": node_id,
            "run_state": status.state,
            **asdict(ns),
            "error": error,
            "waiting": None if status.done else ns.waiting(status.now or 0.0),
            "task": node.call or node.task,
            "task_id": task_id,
            "flower": f"{self.flower_url}/task/{quote(task_id, safe=':')}"
            if self.flower_url
            else None,
            "preds": list(node.preds),
            "succs": list(node.succs),
            "join": node.is_join,
            "map_source": node.map_source,
            "queue": node.options.get("queue"),
            "bound": node.kwargs,
            "result": self._result(run_id, node_id),
            "retry": ns.state == "failed" and status.state in ("failed", "cancelled"),
            # a wait_for() node the run can still signal: the page shows a form
            "signal": node.waits
            and status.state == "running"
            and ns.state not in ("succeeded", "failed", "skipped")
            and ns.signalled is None,
        }
        if node.map_source:
            data["items"] = self._item_list(run_id, node_id, fields, status.now or 0.0)
        return data

    def _result(self, run_id: str, field: str) -> dict[str, Any] | None:
        size = self.state.runs.result_size(run_id, field)
        if not size:
            return None
        if size > PREVIEW_BYTES:
            return {"size": size, "preview": None, "truncated": True}
        raw = self.state.runs.result(run_id, field)
        if raw is None:  # expired between the two reads
            return None
        try:
            text = json.dumps(decode_value(raw), indent=2, sort_keys=True, default=str)
        except ValueError:
            text = raw.decode(errors="replace")
        return {
            "size": size,
            "preview": text[:PREVIEW_CHARS],
            "truncated": len(text) > PREVIEW_CHARS,
        }

    def _item_list(
        self,
        run_id: str,
        node_id: str,
        fields: dict[str, str],
        now: float,
    ) -> dict[str, Any]:
        count = int(fields.get(f"{node_id}:items", 0))
        shown = []
        for i in range(min(count, ITEMS_SHOWN)):
            item = NodeStatus.from_fields(f"{node_id}#{i}", fields)
            shown.append(
                {
                    "index": i,
                    "state": item.state,
                    "attempts": item.attempts,
                    "worker": item.worker,
                    "started": item.started,
                    "finished": item.finished,
                }
            )
        return {"count": count, "shown": shown}

    def workers(self) -> list[dict[str, Any]]:
        out = []
        for w in live_workers(self.app):
            m = w.metrics
            out.append(
                {
                    "hostname": w.hostname,
                    "state": w.state,
                    "pid": w.pid,
                    "queues": w.queues,
                    "heartbeat": w.heartbeat,
                    "heartbeat_age": w.heartbeat_age,
                    "started": w.started,
                    "uptime": w.uptime,
                    "processed": m.get("processed", 0),
                    "succeeded": m.get("succeeded", 0),
                    "failed": m.get("failed", 0),
                    "retried": m.get("retried", 0),
                    "in_flight": m.get("in_flight", 0),
                    "mean_runtime": w.mean_runtime,
                }
            )
        return out

    def flows(self) -> list[dict[str, Any]]:
        """The registered flows, each with how its runs went over the last day and week
        (``stats``: from per-flow counters, never a scan of runs)."""
        now = self.state.runs.time()
        out = []
        for f in self.registry.flows.values():
            data = f.as_json()
            data["stats"] = {
                "day": self.state.index.flow_stats(f.name, now - 86400, now),
                "week": self.state.index.flow_stats(f.name, now - 7 * 86400, now),
            }
            out.append(data)
        return out

    def flow_names(self) -> list[str]:
        """Names for the runs page's filter: registered flows, then flows runs recorded."""
        names = list(self.registry.flows)
        for name in self.state.index.flow_names():
            if name not in names:
                names.append(name)
        return names

    def schedules(self) -> list[dict[str, Any]]:
        """Every schedule() entry that fired (or was paused), as `celery-graph schedules
        --json` lists them."""
        return self.state.schedules.all()

    # -- acting --------------------------------------------------------------------------

    def pause_schedule(self, name: str, paused: bool) -> dict[str, Any]:
        """Pause or resume schedule ``name`` (NotFound for a name never recorded)."""
        if not self.state.schedules.set_paused(name, paused, self.state.runs.time()):
            raise NotFound(f"no schedule {name!r}: a schedule is listed once its entry fired")
        return {"name": name, "paused": paused}

    def cancel(self, run_id: str, terminate: bool = False) -> dict[str, Any]:
        """Cancel a running run; ``terminate``: stop its running nodes too, through
        Celery's revoke(terminate=True)."""
        run = GraphRun(run_id, app=self.app)
        state = self.state.runs.record(run_id)["status"]
        if state not in ("running", "queued"):
            raise ActionRefused(
                f"run {run_id} is {state}: only a running or queued run can be cancelled"
            )
        running = run.running_task_ids() if terminate else []
        cancelled = run.cancel(terminate=terminate)
        answer = {
            "run_id": run_id,
            "cancelled": cancelled,
            "state": self.state.runs.record(run_id)["status"],
        }
        if terminate:
            answer["terminated"] = running
        return answer

    def resume(self, run_id: str, node_id: str | None = None) -> dict[str, Any]:
        """Resume the run: every node it had not finished is sent again. With ``node_id``
        (retry one node), the node must have failed; the rest of the frontier goes too."""
        _record, spec, fields, status = self._status(run_id)
        if status.state not in ("failed", "cancelled"):
            raise ActionRefused(
                f"run {run_id} is {status.state}: only a failed or cancelled run can be resumed"
            )
        if node_id is not None:
            if node_id not in spec.nodes:
                raise NotFound(f"run {run_id} has no node {node_id!r}")
            if status.nodes[node_id].state != "failed":
                raise ActionRefused(
                    f"node {node_id!r} is {status.nodes[node_id].state}: only a failed node "
                    "can be retried"
                )
        results = set(self.state.runs.results(run_id))
        frontier, items, _skips, _watch = resume_frontier(
            spec, fields, results, self.state.runs.leases(run_id), status.now or 0.0
        )
        try:
            GraphRun(run_id, app=self.app, spec=spec).resume()
        except RunNotResumable as exc:
            raise ActionRefused(str(exc)) from exc
        return {
            "run_id": run_id,
            "state": self.state.runs.record(run_id)["status"],
            "sent": frontier + sorted({n for n, _ in items}),
        }

    def signal(self, run_id: str, node_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Signal the run's wait_for(node_id) with ``body["payload"]`` (an approval:
        ``{"approved": true, "by": "..."}``)."""
        unexpected = sorted(set(body) - {"payload"})
        if unexpected:
            raise BadRequest(f'a signal\'s body is {{"payload": ...}}; unexpected: {unexpected}')
        delivered = GraphRun(run_id, app=self.app).signal(node_id, body.get("payload"))
        return {"run_id": run_id, "wait": node_id, "delivered": delivered}

    def start(
        self, name: str, body: dict[str, Any], header_key: str | None = None
    ) -> dict[str, Any]:
        """Start flow ``name`` from a request's body; ``header_key``: its Idempotency-Key
        header (the body's ``idempotency_key`` may say the same, not something else)."""
        entry = self.registry.get(name)
        if entry is None:
            raise NotFound(
                f"no flow {name!r} in graph_ui_flows (flows: "
                f"{', '.join(self.registry.flows) or 'none'})"
            )
        unknown = sorted(set(body) - {"inputs", "idempotency_key", "deadline"})
        if unknown:
            raise BadRequest(
                f"unknown field(s) {', '.join(unknown)}: a start takes inputs, "
                "idempotency_key and deadline"
            )
        inputs = body.get("inputs") or {}
        if not isinstance(inputs, dict):
            raise BadRequest("inputs must be a JSON object of parameter -> value")
        key = body.get("idempotency_key") or None
        if header_key is not None:
            if key is not None and key != header_key:
                raise BadRequest(
                    "the Idempotency-Key header and the body's idempotency_key differ: give one"
                )
            key = header_key
        if key is not None and (not isinstance(key, str) or len(key) > MAX_KEY_CHARS):
            raise BadRequest(
                f"idempotency_key must be a string of at most {MAX_KEY_CHARS} characters"
            )
        deadline = body.get("deadline")
        if deadline is not None and (
            isinstance(deadline, bool)
            or not isinstance(deadline, (int, float))
            or not math.isfinite(deadline)
            or deadline <= 0
        ):
            raise BadRequest("deadline must be a positive number of seconds")
        run = self.registry.start(name, inputs, idempotency_key=key, deadline=deadline)
        return {"run_id": run.id, "flow": name}

    def info(self) -> dict[str, Any]:
        return {
            "key_prefix": self.state.keys.prefix,
            "flower": self.flower_url,
            "indexed_since": self.state.index.indexed_since(),
            "final_states": list(FINAL_STATES),
            "server_time": self.state.runs.time(),
        }
