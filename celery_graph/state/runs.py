"""Run records: creating a run, and every read a client makes of one."""

from __future__ import annotations

import json
import time
from typing import Any

from ..codec import decode_value, parse_error
from ..errors import RunNotFound
from ..keys import RUN_ID_RE, Keys
from ..model import FINAL_STATES, GraphSpec, Outcome, RunStatus
from .connection import WAIT_SLICE, translated
from .graphs import GraphStore


class RunStore:
    """Reads and writes of run records that are not Lua operations."""

    def __init__(
        self, client: Any, wait_client: Any, keys: Keys, graphs: GraphStore, run_ttl: int
    ) -> None:
        self.client = client  # bytes replies (decode_responses off)
        self._wait_client = wait_client
        self.keys = keys
        self.graphs = graphs
        self.run_ttl = run_ttl

    # -- starting a run ----------------------------------------------------------------

    def create(
        self, run_id: str, spec: GraphSpec, inputs_json: str, extra: dict[str, Any]
    ) -> None:
        """Store the graph and the run record, and mark the roots published, in one
        round trip (the caller publishes the roots next)."""
        k = self.keys
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        self.graphs.put_commands(pipe, spec)
        pipe.hset(
            k.run(run_id),
            mapping={
                "status": "running",
                "graph": spec.graph_id,
                "inputs": inputs_json,
                "created": f"{now:.6f}",
                "nodes": len(spec.nodes),
                "sinks": json.dumps(list(spec.sinks)),
                **extra,
            },
        )
        pipe.expire(k.run(run_id), self.run_ttl)
        pipe.zadd(k.runs_index(), {run_id: now})
        pipe.zremrangebyscore(k.runs_index(), 0, now - self.run_ttl)
        pipe.expire(k.runs_index(), self.run_ttl)
        pipe.hset(k.nodes(run_id), mapping={f"{r}:dispatch": "published" for r in spec.roots})
        pipe.expire(k.nodes(run_id), self.run_ttl)
        translated("creating a run", pipe.execute)
        self.graphs.remember(spec)

    def claim_idempotency(self, digest: str, run_id: str) -> str | None:
        """Bind an idempotency key to ``run_id``; the run already bound to it, if any."""
        key = self.keys.idempotency(digest)
        claimed = translated(
            "claiming an idempotency key",
            lambda: self.client.set(key, run_id, nx=True, ex=self.run_ttl),
        )
        if claimed:
            return None
        existing = translated("reading an idempotency key", lambda: self.client.get(key))
        return existing.decode() if existing else None

    def release_idempotency(self, digest: str, run_id: str) -> None:
        """Unbind a key from a run that did not start, so a retry starts afresh."""
        key = self.keys.idempotency(digest)
        if translated("reading an idempotency key", lambda: self.client.get(key)) == (
            run_id.encode()
        ):
            translated("releasing an idempotency key", lambda: self.client.delete(key))

    # -- reading -----------------------------------------------------------------------

    def record(self, run_id: str) -> dict[str, str]:
        if not RUN_ID_RE.match(run_id or ""):
            raise RunNotFound(f"{run_id!r} is not a run id (32 hex digits)")
        raw = translated("reading a run", lambda: self.client.hgetall(self.keys.run(run_id)))
        if not raw:
            raise RunNotFound(
                f"no run {run_id} under key prefix {self.keys.prefix!r} (finished runs expire "
                "after graph_result_ttl)"
            )
        return {k.decode(): v.decode() for k, v in raw.items()}

    def results(self, run_id: str) -> dict[str, bytes]:
        raw = translated("reading results", lambda: self.client.hgetall(self.keys.results(run_id)))
        return {k.decode(): v for k, v in raw.items()}

    def node_fields(self, run_id: str) -> dict[str, str]:
        raw = translated(
            "reading node states", lambda: self.client.hgetall(self.keys.nodes(run_id))
        )
        return {k.decode(): v.decode() for k, v in raw.items()}

    def status(self, run_id: str, spec: GraphSpec) -> RunStatus:
        record = self.record(run_id)
        return RunStatus.from_state(run_id, record, self.node_fields(run_id), spec.order)

    def outcome(self, run_id: str, record: dict[str, str] | None = None) -> Outcome | None:
        """How the run ended (None while it runs): the sinks' results, or its error."""
        record = record or self.record(run_id)
        state = record["status"]
        if state not in FINAL_STATES:
            return None
        if state != "succeeded":
            return Outcome(run_id, state, error=parse_error(record.get("error")))
        sinks = json.loads(record["sinks"])
        raws = translated(
            "reading results", lambda: self.client.hmget(self.keys.results(run_id), sinks)
        )
        values = {s: decode_value(r) if r is not None else None for s, r in zip(sinks, raws)}
        return Outcome(run_id, state, values[sinks[0]] if len(sinks) == 1 else values)

    def continuation(self, run_id: str) -> dict[str, Any] | None:
        """The Celery request of the canvas step that started the run, if one did."""
        key = self.keys.run(run_id)
        raw = translated("reading a continuation", lambda: self.client.hget(key, "continuation"))
        return json.loads(raw) if raw else None

    def recent(self, limit: int = 20) -> list[str]:
        ids = translated(
            "listing runs",
            lambda: self.client.zrevrange(self.keys.runs_index(), 0, max(0, limit - 1)),
        )
        return [i.decode() for i in ids]

    def wait(self, run_id: str, seconds: float) -> None:
        """Block up to ``seconds`` (at most WAIT_SLICE) on the run's completion signal."""
        done = self.keys.done(run_id)
        # BLMOVE from the list to itself rotates the signal, so every waiter sees it.
        translated(
            "waiting for a run",
            lambda: self._wait_client().blmove(
                done, done, min(seconds, WAIT_SLICE), "LEFT", "RIGHT"
            ),
        )
