"""GraphStore (content-addressed graphs) and the run records.

A graph is stored once under ``P:graph:<sha256>``, zlib-compressed, written with SET NX and
a TTL that slides: every submission and every cache miss on load refreshes it. Each process
keeps a bounded LRU cache of parsed specs; a blob whose hash does not match its id is
refused (GraphCorrupted), never run.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from .errors import GraphCorrupted, GraphNotFound, RunNotFound, StoreUnavailable
from .keys import RUN_ID_RE, Keys
from .spec import GraphSpec, sha256

T = TypeVar("T")


def translate_errors(what: str, fn: Callable[[], T]) -> T:
    """Run ``fn``; turn redis-py connection errors into StoreUnavailable."""
    try:
        return fn()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable(
            f"Redis unreachable while {what}: {exc}; check graph_redis_url / "
            "CELERY_GRAPH_REDIS_URL and that the server is up"
        ) from exc


class GraphStore:
    def __init__(self, client: redis.Redis, keys: Keys, ttl: int, cache_size: int) -> None:
        self.client: Any = client  # bytes replies (decode_responses off)
        self.keys = keys
        self.ttl = ttl
        self.cache_size = cache_size
        self._cache: OrderedDict[str, GraphSpec] = OrderedDict()
        self._lock = threading.Lock()

    def _remember(self, spec: GraphSpec) -> None:
        with self._lock:
            self._cache[spec.graph_id] = spec
            self._cache.move_to_end(spec.graph_id)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def put_commands(self, pipe: Any, spec: GraphSpec) -> None:
        """Queue the write of ``spec`` on a pipeline (SET NX + TTL refresh)."""
        key = self.keys.graph(spec.graph_id)
        pipe.set(key, compressed(spec), nx=True, ex=self.ttl)
        pipe.expire(key, self.ttl)

    def put(self, spec: GraphSpec) -> bool:
        """Store ``spec``; True if this call wrote it (False: it was already there)."""
        pipe = self.client.pipeline(transaction=False)
        self.put_commands(pipe, spec)
        created, _ = translate_errors("storing a graph", pipe.execute)
        self._remember(spec)
        return bool(created)

    def load(self, graph_id: str) -> GraphSpec:
        with self._lock:
            spec = self._cache.get(graph_id)
            if spec is not None:
                self._cache.move_to_end(graph_id)
                return spec
        key = self.keys.graph(graph_id)
        blob = translate_errors(
            "loading a graph", lambda: self.client.getex(key, ex=self.ttl)
        )
        if blob is None:
            raise GraphNotFound(
                f"graph {graph_id} is not in the store under {key!r}: it expired "
                "(graph_store_ttl) or was stored under another key prefix"
            )
        try:
            raw = zlib.decompress(blob)
        except zlib.error as exc:
            raise GraphCorrupted(f"graph {graph_id} at {key!r} does not decompress: {exc}") from exc
        if sha256(raw) != graph_id:
            raise GraphCorrupted(
                f"graph at {key!r} hashes to {sha256(raw)}, not {graph_id}: refusing to run it"
            )
        spec = GraphSpec.from_blob(raw, graph_id)
        self._remember(spec)
        return spec

    def cached(self, graph_id: str) -> bool:
        return graph_id in self._cache


_compressed: dict[str, bytes] = {}


def compressed(spec: GraphSpec) -> bytes:
    blob = _compressed.get(spec.graph_id)
    if blob is None:
        blob = zlib.compress(spec.blob, 6)
        if len(_compressed) > 256:
            _compressed.clear()
        _compressed[spec.graph_id] = blob
    return blob


class RunStore:
    """Reads and writes of run records that are not barrier operations."""

    def __init__(self, client: redis.Redis, keys: Keys, run_ttl: int) -> None:
        self.client: Any = client  # bytes replies (decode_responses off)
        self.keys = keys
        self.run_ttl = run_ttl

    def create_commands(
        self, pipe: Any, run_id: str, spec: GraphSpec, inputs_json: str, extra: dict[str, Any]
    ) -> None:
        k = self.keys
        now = time.time()
        pipe.hset(
            k.run(run_id),
            mapping={
                "status": "running",
                "graph": spec.graph_id,
                "inputs": inputs_json,
                "created": f"{now:.6f}",
                "nodes": len(spec.nodes),
                **extra,
            },
        )
        pipe.expire(k.run(run_id), self.run_ttl)
        pipe.zadd(k.runs_index(), {run_id: now})
        pipe.zremrangebyscore(k.runs_index(), 0, now - self.run_ttl)
        pipe.expire(k.runs_index(), self.run_ttl)

    def record(self, run_id: str) -> dict[str, str]:
        if not RUN_ID_RE.match(run_id or ""):
            raise RunNotFound(f"{run_id!r} is not a run id (32 hex digits)")
        raw = translate_errors("reading a run", lambda: self.client.hgetall(self.keys.run(run_id)))
        if not raw:
            raise RunNotFound(
                f"no run {run_id} under key prefix {self.keys.prefix!r} (finished runs expire "
                "after graph_result_ttl)"
            )
        return {k.decode(): v.decode() for k, v in raw.items()}

    def results(self, run_id: str) -> dict[str, bytes]:
        raw = translate_errors(
            "reading results", lambda: self.client.hgetall(self.keys.results(run_id))
        )
        return {k.decode(): v for k, v in raw.items()}

    def node_fields(self, run_id: str) -> dict[str, str]:
        raw = translate_errors(
            "reading node states", lambda: self.client.hgetall(self.keys.nodes(run_id))
        )
        return {k.decode(): v.decode() for k, v in raw.items()}

    def recent(self, limit: int = 20) -> list[str]:
        ids = translate_errors(
            "listing runs",
            lambda: self.client.zrevrange(self.keys.runs_index(), 0, max(0, limit - 1)),
        )
        return [i.decode() for i in ids]
