"""GraphStore: content-addressed graphs.

A graph is stored once under ``P:graph:<sha256>``, zlib-compressed, written with SET NX and
a TTL that slides: every submission and every load refreshes it (a load served from the
process cache refreshes it at most every ``ttl / 24`` seconds, so a worker that keeps
using a cached graph keeps the stored copy alive for the others). Each process keeps a
bounded LRU cache of parsed specs; a blob whose hash does not match its id is refused
(GraphCorrupted), never run.

Every graph is at most ``graph_max_graph_bytes`` (its JSON; the compressed copy is no
larger), checked before it is stored and while it is read: a load reads at most that many
bytes of the key and decompresses at most that many, so a blob written by something else
(a zlib bomb included) costs a bounded read and is refused (GraphTooLarge), never inflated.
"""

from __future__ import annotations

import contextlib
import threading
import time
import zlib
from collections import OrderedDict
from typing import Any

from ..codec import sha256
from ..errors import GraphCorrupted, GraphNotFound, GraphTooLarge, StoreUnavailable
from ..keys import Keys
from ..model import GraphSpec
from .connection import translated


class GraphStore:
    def __init__(
        self, client: Any, keys: Keys, ttl: int, cache_size: int, max_bytes: int = 64 << 20
    ) -> None:
        self.client = client  # bytes replies (decode_responses off)
        self.keys = keys
        self.ttl = ttl
        self.cache_size = cache_size
        self.max_bytes = max_bytes  # graph_max_graph_bytes
        self._cache: OrderedDict[str, GraphSpec] = OrderedDict()
        self._refreshed: dict[str, float] = {}  # graph id -> monotonic time of last refresh
        self.refresh_every = max(1.0, ttl / 24)
        self._lock = threading.Lock()

    def remember(self, spec: GraphSpec) -> None:
        """Keep ``spec`` in this process's cache (after storing it)."""
        with self._lock:
            self._cache[spec.graph_id] = spec
            self._cache.move_to_end(spec.graph_id)
            self._refreshed[spec.graph_id] = time.monotonic()
            while len(self._cache) > self.cache_size:
                gone, _ = self._cache.popitem(last=False)
                self._refreshed.pop(gone, None)

    def put_commands(self, spec: GraphSpec) -> list[tuple[Any, ...]]:
        """The commands that write ``spec`` (SET NX + TTL refresh), for a pipeline or a
        script's round trip; GraphTooLarge, before anything is written, for a graph over
        the limit."""
        if len(spec.blob) > self.max_bytes:
            raise GraphTooLarge(
                f"graph {spec.graph_id} is {len(spec.blob)} bytes of JSON, over "
                f"graph_max_graph_bytes ({self.max_bytes}); raise the setting on every "
                "process of the app, or split the graph (child runs, maps)"
            )
        key = self.keys.graph(spec.graph_id)
        return [("SET", key, compressed(spec), "NX", "EX", self.ttl), ("EXPIRE", key, self.ttl)]

    def put(self, spec: GraphSpec) -> bool:
        """Store ``spec``; True if this call wrote it (False: it was already there)."""
        pipe = self.client.pipeline(transaction=False)
        for command in self.put_commands(spec):
            pipe.execute_command(*command)
        created, _ = translated("storing a graph", pipe.execute)
        self.remember(spec)
        return bool(created)

    def load(self, graph_id: str) -> GraphSpec:
        with self._lock:
            spec = self._cache.get(graph_id)
            stale = False
            if spec is not None:
                self._cache.move_to_end(graph_id)
                now = time.monotonic()
                stale = now - self._refreshed.get(graph_id, 0.0) >= self.refresh_every
                if stale:
                    self._refreshed[graph_id] = now
        if spec is not None:
            if stale:  # keep the stored copy alive; a cached spec still runs if Redis blips
                with contextlib.suppress(StoreUnavailable):
                    translated(
                        "refreshing a graph's expiry",
                        lambda: self.client.expire(self.keys.graph(graph_id), self.ttl),
                    )
            return spec
        key = self.keys.graph(graph_id)
        limit = self.max_bytes

        def read() -> tuple[bytes, bool]:
            # at most limit + 1 bytes of the key; the expiry refresh says whether it exists
            pipe = self.client.pipeline(transaction=False)
            pipe.getrange(key, 0, limit)
            pipe.expire(key, self.ttl)
            blob, exists = pipe.execute()
            return blob, bool(exists)

        blob, exists = translated("loading a graph", read)
        if not exists:
            raise GraphNotFound(
                f"graph {graph_id} is not in the store under {key!r}: it expired "
                "(graph_store_ttl) or was stored under another key prefix"
            )
        raw = inflate(graph_id, key, blob, limit)
        if sha256(raw) != graph_id:
            raise GraphCorrupted(
                f"graph at {key!r} hashes to {sha256(raw)}, not {graph_id}: refusing to run it"
            )
        spec = GraphSpec.from_blob(raw, graph_id)
        self.remember(spec)
        return spec


INFLATE_STEP = 1 << 20  # bytes decompressed at a time


def inflate(graph_id: str, key: str, blob: bytes, limit: int) -> bytes:
    """The JSON of a stored graph, decompressed a step at a time: at most ``limit``
    bytes of it are read or made, whatever the blob claims."""
    too_large = f"graph {graph_id} at {key!r} is larger than graph_max_graph_bytes ({limit} bytes)"
    if len(blob) > limit:
        raise GraphTooLarge(f"{too_large} in Redis: refused unread")
    inflater = zlib.decompressobj()
    parts: list[bytes] = []
    size, data = 0, blob
    try:
        while not inflater.eof:
            part = inflater.decompress(data, INFLATE_STEP)
            data = inflater.unconsumed_tail
            if not part and not data:
                break  # the input ended before the stream did
            size += len(part)
            if size > limit:
                parts.clear()  # the exception's traceback keeps this frame a while
                raise GraphTooLarge(f"{too_large} once decompressed: refused")
            parts.append(part)
    except zlib.error as exc:
        raise GraphCorrupted(f"graph {graph_id} at {key!r} does not decompress: {exc}") from exc
    if not inflater.eof:
        raise GraphCorrupted(f"graph {graph_id} at {key!r} does not decompress: truncated")
    return b"".join(parts)


_compressed: dict[str, bytes] = {}


def compressed(spec: GraphSpec) -> bytes:
    blob = _compressed.get(spec.graph_id)
    if blob is None:
        blob = zlib.compress(spec.blob, 6)
        if len(_compressed) > 256:
            _compressed.clear()
        _compressed[spec.graph_id] = blob
    return blob
