"""Node bookkeeping, the join barrier and leases: thin wrappers over the Lua scripts in
``lua/``.

Each script documents its KEYS and ARGV in its header. Every key a script touches is
passed in KEYS and belongs to one run, so all of them share the run's ``{run_id}`` hash
tag. Every time a script compares or records is the Redis server's clock (``TIME``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis

from ..config import Settings
from ..errors import BarrierError, RunNotResumable
from ..keys import Keys
from ..model import GraphSpec, NodeSpec
from .connection import load_script, translating

# The most successors, items or fields one call handles: a call stays a few milliseconds
# long at 100,000 nodes, so it never blocks Redis for everyone else.
PART = 500

SCRIPTS = (
    "start",
    "begin",
    "complete",
    "finish",
    "resume",
    "map_arrive",
    "item",
    "expand",
    "reclaim",
    "lease",
    "continue",
)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Begun(NamedTuple):
    """What begin.lua answered."""

    status: str | None  # running, deadline, poison, done, or the run's final status / None
    inputs: bytes | None  # the run inputs (JSON)
    own: bytes | None  # the node's stored result: it ran already
    upstream: list[bytes | None]  # results of the upstream nodes, in the order asked
    attempt: int = 0  # this attempt's number (when the node is called); "poison": times lost
    worker: str = ""  # "poison": the worker that last lost it


class Arrival(NamedTuple):
    """What complete.lua answered for one arrival."""

    stored: int  # 1 stored now, 0 already stored, -1 run not running, -2 failure ignored
    ended: int  # 1 this arrival ended the run as succeeded, 2 as failed (group policy)
    publish: list[str]  # successors this arrival released (marked published): publish them
    skipped: list[str]  # successors that will not run (all their arrivals were skips)


@dataclass(frozen=True)
class Reclaim:
    """What reclaim.lua answered: see there."""

    verdict: str  # gone, ended, deadline, poison, ok
    pending_continuation: bool = False
    poison: tuple[str, int, str] | None = None  # field, times lost, last worker
    now: float = 0.0
    next_running: float | None = None  # the earliest running lease left
    next_queued: float | None = None  # the earliest queued lease left (it may have run out)
    # (field, kind: lost | queued | skip, when it was last published or 0)
    expired: tuple[tuple[str, str, float], ...] = ()


class Scripts:
    """Runs the scripts against one Redis client under one key prefix."""

    def __init__(self, client: Any, keys: Keys, settings: Settings) -> None:
        self._client = client
        self.keys = keys
        self.settings = settings
        self._scripts = {name: client.register_script(load_script(name)) for name in SCRIPTS}

    def _call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        with translating(f"running {name}.lua"):
            return self._scripts[name](keys=keys, args=args)

    def _run_keys(self, run_id: str) -> list[str]:
        """The keys every run has (joins' and maps' arrivals expire by themselves)."""
        k = self.keys
        return [
            k.run(run_id),
            k.results(run_id),
            k.nodes(run_id),
            k.done(run_id),
            k.sinks(run_id),
            k.state(run_id),
            k.leases(run_id),
            k.queued(run_id),
        ]

    # -- a run ---------------------------------------------------------------------------

    def start(
        self,
        run_id: str,
        spec: GraphSpec,
        inputs_json: str,
        deadline: float | None,
        extra: dict[str, str],
    ) -> tuple[bool, str]:
        """Create the run; (True, server time) when created, (False, status) when a run
        with this id exists already."""
        k = self.keys
        others = [
            key
            for key in k.run_keys(run_id, spec.joins, spec.maps)
            if key not in (k.run(run_id), k.nodes(run_id), k.queued(run_id))
        ]
        args: list[Any] = [
            spec.graph_id,
            inputs_json,
            len(spec.nodes),
            json.dumps(list(spec.sinks)),
            "" if deadline is None else repr(float(deadline)),
            self.settings.run_ttl,
            self.settings.queued_lease,
            json.dumps(extra),
        ]
        for root in spec.roots:
            args += [root, spec.nodes[root].delay]
        created, detail = self._call(
            "start", [k.run(run_id), k.nodes(run_id), k.queued(run_id), *others], args
        )
        return bool(created), _text(detail)

    def begin(
        self,
        run_id: str,
        field: str,
        hostname: str,
        upstream_ids: list[str],
        expands: bool = False,
    ) -> Begun:
        """Record the start of ``field`` (a node id, or "<node>#<i>" for a map item) and
        read the results of ``upstream_ids`` (a long list in parts, after the script)."""
        k = self.keys
        reply = self._call(
            "begin",
            [k.run(run_id), k.results(run_id), k.nodes(run_id), k.leases(run_id), k.queued(run_id)],
            [
                field,
                hostname,
                self.settings.running_lease,
                self.settings.run_ttl,
                "map" if expands else "",
                self.settings.max_lost,
                *upstream_ids[:PART],
            ],
        )
        status = _text(reply[0]) if reply and reply[0] is not None else None
        if status == "poison":
            return Begun(status, None, None, [], int(reply[1]), _text(reply[2]))
        if status != "running":
            return Begun(status, None, None, [])
        if reply[2]:
            return Begun(status, reply[1], reply[2], [])
        upstream = [r or None for r in reply[4:]]
        if len(upstream_ids) > PART:
            upstream += self.results_of(run_id, upstream_ids[PART:])
        return Begun(status, reply[1], None, upstream, int(reply[3]))

    def results_of(self, run_id: str, fields: list[str]) -> list[bytes | None]:
        """Stored results of ``fields``, read in parts (results never change once stored)."""
        key = self.keys.results(run_id)
        out: list[bytes | None] = []
        for i in range(0, len(fields), PART * 2):
            part = fields[i : i + PART * 2]
            with translating("reading results"):
                out += self._client.hmget(key, part)
        return out

    def complete(
        self,
        spec: GraphSpec,
        run_id: str,
        node: NodeSpec,
        result_json: bytes | str,
        *,
        kind: str = "ok",
        branch: str = "",
        error_json: str = "",
        traceback: str = "",
    ) -> Arrival:
        """Store the result and arrive at the successors (see complete.lua), in parts of
        PART successors. ``kind`` is "ok", "failed" (a member of a group with a failure
        policy, with ``error_json``) or "skipped"; ``branch`` is "!a,b" when the node chose
        those successors only."""
        k = self.keys
        base_keys = [
            k.run(run_id),
            k.results(run_id),
            k.nodes(run_id),
            k.sinks(run_id),
            k.done(run_id),
            k.leases(run_id),
            k.state(run_id),
            k.queued(run_id),
        ]
        policy = ""
        if kind == "failed" and node.tolerant is not None:
            policy = json.dumps(spec.policies[node.tolerant])
        succs = list(node.succs)
        parts = [succs[i : i + PART] for i in range(0, len(succs), PART)] or [[]]
        stored, ended, publish, skipped = 0, 0, [], []
        for n, part in enumerate(parts):
            keys = list(base_keys)
            args: list[Any] = [
                node.id,
                result_json,
                len(spec.sinks) if not node.succs else 0,
                self.settings.run_ttl,
                self.settings.result_ttl,
                len(part),
                self.settings.queued_lease,
                error_json,
                branch,
                kind,
                policy,
                node.tolerant or "",
                traceback,
                "1" if n == 0 else "",
                "1" if n == len(parts) - 1 else "",
                "1" if len(succs) >= 2 else "",
            ]
            for succ in part:
                target = spec.nodes[succ]
                args += [succ, len(target.preds), target.delay]
                if target.is_join:
                    keys.append(k.join(run_id, succ))
            reply = self._call("complete", keys, args)
            if not isinstance(reply, list) or len(reply) < 3:
                raise BarrierError(f"complete.lua answered {reply!r}")
            n_pub = int(reply[2])
            ids = [_text(s) for s in reply[3:]]
            if n == 0:
                stored = int(reply[0])
            ended = ended or int(reply[1])
            publish += ids[:n_pub]
            skipped += ids[n_pub:]
            if int(reply[0]) < 0 or ended == 2:  # not running, ignored, or failed: no more parts
                break
        return Arrival(stored, ended, publish, skipped)

    def finish(
        self,
        run_id: str,
        status: str,
        node_id: str = "",
        error_json: str = "",
        *,
        guard: str = "",
        unsent: bool = False,
    ) -> int:
        """End a running run as failed or cancelled: 1 if this call ended it, 0 if it had
        ended already, -1 if ignored (``guard``, a result field, holds a result: the
        failure is a failing copy of a message that succeeded)."""
        args = [status, node_id, error_json, self.settings.result_ttl, guard, "1" if unsent else ""]
        return int(self._call("finish", self._run_keys(run_id), args))

    def resume(self, run_id: str, fields: list[str], watch: list[str] | None = None) -> list[str]:
        """Reopen a failed or cancelled run and lease ``fields`` (nodes and map items) to
        be sent again, and those of ``watch`` (left running) that ended meanwhile; returns
        the latter, for the caller to send as well."""
        k = self.keys
        keys = [
            k.run(run_id),
            k.nodes(run_id),
            k.done(run_id),
            k.leases(run_id),
            k.results(run_id),
            k.sinks(run_id),
            k.state(run_id),
            k.queued(run_id),
        ]
        try:
            late = self._call(
                "resume",
                keys,
                [
                    self.settings.run_ttl,
                    self.settings.queued_lease,
                    len(fields),
                    *fields,
                    *(watch or []),
                ],
            )
        except redis.ResponseError as exc:
            raise RunNotResumable(f"run {run_id} cannot be resumed: {exc}") from exc
        return [_text(f) for f in late]

    # -- maps ----------------------------------------------------------------------------

    def expand(self, run_id: str, node: NodeSpec, count: int) -> bool:
        """Lease the units (items or chunks) of map node ``node`` with ``count`` items, in
        parts; False if it was expanded already."""
        k = self.keys
        units = node.units(count)
        sep = "@" if node.map_chunk else "#"
        for start in range(0, units, PART * 4):
            if not self._call(
                "expand",
                [k.run(run_id), k.nodes(run_id), k.leases(run_id), k.queued(run_id)],
                [
                    node.id,
                    count,
                    self.settings.queued_lease,
                    self.settings.run_ttl,
                    start,
                    min(start + PART * 4, units),
                    units,
                    sep,
                ],
            ):
                return False
        return True

    def map_arrive(
        self, run_id: str, node: NodeSpec, unit: int, units: int, result_json: bytes | str
    ) -> tuple[int, int, int]:
        """Unit ``unit`` of map node ``node`` arrived (an item with its result, or a chunk
        with ""); (stored, units arrived, items of the map)."""
        k = self.keys
        reply = self._call(
            "map_arrive",
            [
                k.run(run_id),
                k.results(run_id),
                k.nodes(run_id),
                k.map(run_id, node.id),
                k.leases(run_id),
                k.queued(run_id),
            ],
            [
                node.unit_field(unit),
                result_json,
                unit,
                self.settings.run_ttl,
                units,
                self.settings.result_ttl,
                node.id,
                self.settings.running_lease,
            ],
        )
        return int(reply[0]), int(reply[1]), int(reply[2])

    def store_items(self, run_id: str, node_id: str, items: list[tuple[int, str]]) -> int:
        """Store the results of items of a chunked map, ``[(index, result JSON), ...]``;
        the number stored now, or -1 when the run is no longer running."""
        k = self.keys
        args: list[Any] = [self.settings.run_ttl]
        for index, result_json in items:
            args += [f"{node_id}#{index}", result_json]
        return int(self._call("item", [k.run(run_id), k.results(run_id)], args))

    def map_count(self, run_id: str, node_id: str) -> int:
        """How many items map node ``node_id`` expanded into (0 before it expanded)."""
        with translating("reading a map's size"):
            raw = self._client.hget(self.keys.nodes(run_id), f"{node_id}:items")
        return int(raw or 0)

    def map_results(self, run_id: str, node_id: str, count: int) -> bytes:
        """The JSON list of the items' results, in item order."""
        raws = self.results_of(run_id, [f"{node_id}#{i}" for i in range(count)])
        missing = [i for i, r in enumerate(raws) if r is None]
        if missing:
            raise BarrierError(f"map node {node_id!r}: results of items {missing[:5]} missing")
        return b"[" + b",".join(r for r in raws if r is not None) + b"]"

    def node_states(self, run_id: str, node_ids: list[str]) -> dict[str, str | None]:
        key = self.keys.nodes(run_id)
        out: dict[str, str | None] = {}
        for i in range(0, len(node_ids), PART * 2):
            part = node_ids[i : i + PART * 2]
            with translating("reading node states"):
                raw = self._client.hmget(key, [f"{n}:state" for n in part])
            out.update({n: v.decode() if v else None for n, v in zip(part, raw)})
        return out

    # -- leases and the reconciler ------------------------------------------------------

    def lease(
        self, run_id: str, mode: str, seconds: float, fields: list[str], attempt: int = 0
    ) -> int:
        """Set leases of ``fields`` ``seconds`` from now (see lease.lua for the modes;
        ``attempt`` for "requeue")."""
        if not fields:
            return 0
        k = self.keys
        return int(
            self._call(
                "lease",
                [k.run(run_id), k.nodes(run_id), k.leases(run_id), k.queued(run_id)],
                [mode, seconds, attempt or "", *fields],
            )
        )

    def reclaim(self, run_id: str, limit: int = 1000) -> Reclaim:
        k = self.keys
        reply = self._call(
            "reclaim",
            [k.run(run_id), k.nodes(run_id), k.leases(run_id), k.queued(run_id)],
            [self.settings.max_lost, limit],
        )
        verdict = _text(reply[0])
        if verdict == "ended":
            return Reclaim(verdict, pending_continuation=bool(int(reply[1])))
        if verdict == "poison":
            return Reclaim(verdict, poison=(_text(reply[1]), int(reply[2]), _text(reply[3])))
        if verdict != "ok":
            return Reclaim(verdict)
        count = int(reply[4])
        found = [
            (_text(reply[5 + 3 * i]), _text(reply[6 + 3 * i]), float(_text(reply[7 + 3 * i]) or 0))
            for i in range(count)
        ]
        running, queued = _text(reply[2]), _text(reply[3])
        return Reclaim(
            verdict,
            now=float(_text(reply[1])),
            next_running=float(running) if running else None,
            next_queued=float(queued) if queued else None,
            expired=tuple(found),
        )

    def continuation(self, run_id: str, mode: str, hold: float = 60.0) -> str:
        """Claim ("claim") or finish ("done") the continuation of the canvas a run sits in."""
        return _text(self._call("continue", [self.keys.run(run_id)], [mode, hold]))
