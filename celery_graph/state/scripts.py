"""Node bookkeeping and the join barrier: thin wrappers over the Lua scripts in ``lua/``.

Each script documents its KEYS and ARGV in its header. Every key a script touches is
passed in KEYS and belongs to one run, so all of them share the run's ``{run_id}`` hash tag.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import redis

from ..errors import BarrierError, RunNotResumable
from ..keys import Keys
from ..model import GraphSpec, NodeSpec
from .connection import load_script, translating

SCRIPTS = ("begin", "complete", "mark", "finish", "resume", "map_arrive")


class Arrival(NamedTuple):
    """What complete.lua answered for one arrival."""

    stored: int  # 1 stored now, 0 already stored, -1 run not running
    finished: bool  # this arrival ended the run
    publish: list[str]  # successors this arrival released: publish, then mark
    deferred: list[str]  # released by another arrival moments ago: come back later
    skipped: list[str]  # successors that will not run (all their arrivals were skips)


class Scripts:
    """Runs the scripts against one Redis client under one key prefix."""

    def __init__(
        self,
        client: Any,
        keys: Keys,
        run_ttl: int,
        result_ttl: int,
        release_grace: float = 10.0,
    ) -> None:
        self._client = client
        self.keys = keys
        self.run_ttl = run_ttl
        self.result_ttl = result_ttl
        self.release_grace = release_grace
        self._scripts = {name: client.register_script(load_script(name)) for name in SCRIPTS}

    def _call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        with translating(f"running {name}.lua"):
            return self._scripts[name](keys=keys, args=args)

    def begin(
        self,
        run_id: str,
        node: NodeSpec,
        hostname: str,
        field: str | None = None,
        upstream_ids: list[str] | None = None,
    ) -> tuple[str | None, bytes | None, bytes | None, list[bytes | None]]:
        """(status, inputs JSON, own stored result, upstream results in node.upstream_ids()).
        ``field`` names the result of one element of a dynamic fan-out ("<node>#<i>")."""
        k = self.keys
        reply = self._call(
            "begin",
            [k.run(run_id), k.results(run_id), k.nodes(run_id)],
            [field or node.id, hostname, f"{time.time():.6f}", self.run_ttl,
             *(node.upstream_ids() if upstream_ids is None else upstream_ids)],
        )
        status = reply[0].decode() if reply and reply[0] is not None else None
        if status != "running":
            return status, None, None, []
        return status, reply[1], reply[2], list(reply[3:])

    def complete(
        self,
        spec: GraphSpec,
        run_id: str,
        node: NodeSpec,
        result_json: bytes | str,
        now: float | None = None,
        error_json: str = "",
        branch: str = "",
        kind: str = "ok",
    ) -> Arrival:
        """Store the result and arrive at the successors (see complete.lua). ``kind`` is
        "ok", "failed" (a tolerated group member, with ``error_json``) or "skipped";
        ``branch`` is "!a,b" when the node chose those successors only."""
        k = self.keys
        keys = [k.run(run_id), k.results(run_id), k.nodes(run_id), k.sinks(run_id), k.done(run_id)]
        args: list[Any] = [
            node.id,
            result_json,
            len(spec.sinks) if not node.succs else 0,
            self.run_ttl,
            self.result_ttl,
            f"{time.time() if now is None else now:.6f}",
            len(node.succs),
            self.release_grace,
            error_json,
            branch,
            kind,
        ]
        for succ in node.succs:
            npreds = len(spec.nodes[succ].preds)
            args += [succ, npreds]
            if npreds > 1:
                keys.append(k.join(run_id, succ))
        if not node.succs:
            keys += k.run_keys(run_id, spec.joins, spec.maps)
        reply = self._call("complete", keys, args)
        if not isinstance(reply, list) or len(reply) < 4:
            raise BarrierError(f"complete.lua answered {reply!r}")
        n_pub, n_def = int(reply[2]), int(reply[3])
        ids = [s.decode() for s in reply[4:]]
        return Arrival(
            int(reply[0]), bool(reply[1]), ids[:n_pub], ids[n_pub:n_pub + n_def],
            ids[n_pub + n_def:],
        )

    def map_arrive(
        self, run_id: str, node_id: str, index: int, result_json: bytes | str
    ) -> tuple[int, int]:
        """Store element ``index`` of map node ``node_id``; (stored, elements arrived)."""
        k = self.keys
        reply = self._call(
            "map_arrive",
            [k.run(run_id), k.results(run_id), k.nodes(run_id), k.map(run_id, node_id)],
            [f"{node_id}#{index}", result_json, index, self.run_ttl, f"{time.time():.6f}"],
        )
        return int(reply[0]), int(reply[1])

    def map_results(self, run_id: str, node_id: str, count: int) -> bytes:
        """The JSON list of the elements' results, in item order."""
        fields = [f"{node_id}#{i}" for i in range(count)]
        with translating("reading the items of a map"):
            raws = self._client.hmget(self.keys.results(run_id), fields)
        missing = [i for i, r in enumerate(raws) if r is None]
        if missing:
            raise BarrierError(f"map node {node_id!r}: results of items {missing[:5]} missing")
        return b"[" + b",".join(raws) + b"]"

    def node_states(self, run_id: str, node_ids: list[str]) -> dict[str, str | None]:
        with translating("reading node states"):
            raw = self._client.hmget(self.keys.nodes(run_id), [f"{n}:state" for n in node_ids])
        return {n: v.decode() if v else None for n, v in zip(node_ids, raw)}

    def mark_published(self, run_id: str, node_ids: list[str]) -> None:
        if node_ids:
            self._call("mark", [self.keys.nodes(run_id)], node_ids)

    def finish(
        self,
        spec: GraphSpec | None,
        run_id: str,
        status: str,
        node_id: str = "",
        error_json: str = "",
    ) -> bool:
        """End a running run as failed/cancelled; True if this call ended it."""
        k = self.keys
        joins, maps = (spec.joins, spec.maps) if spec is not None else ((), ())
        keys = [k.run(run_id), k.nodes(run_id), k.done(run_id), *k.run_keys(run_id, joins, maps)]
        args = [status, node_id, error_json, self.result_ttl, f"{time.time():.6f}"]
        return bool(self._call("finish", keys, args))

    def resume(self, spec: GraphSpec, run_id: str, node_ids: list[str]) -> str:
        """Reopen a failed/cancelled run; returns its previous status."""
        k = self.keys
        keys = [k.run(run_id), k.nodes(run_id), k.done(run_id),
                *k.run_keys(run_id, spec.joins, spec.maps)]
        try:
            previous = self._call(
                "resume", keys, [self.run_ttl, f"{time.time():.6f}", *node_ids]
            )
        except redis.ResponseError as exc:
            raise RunNotResumable(f"run {run_id} cannot be resumed: {exc}") from exc
        return previous.decode() if isinstance(previous, bytes) else str(previous)
