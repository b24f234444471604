"""RunContext: shared state scoped to one run, for tasks declared with
``@task(inject_context=True)`` (the first parameter receives it)::

    @task(inject_context=True)
    def count_words(ctx, chunk):
        ctx.incr("words", len(chunk.split()))     # atomic across parallel branches
        ctx.append("seen", chunk[:10])            # atomic, ordered
        return ctx.get("threshold", 100)

All of it lives in one Redis hash per run, under the key prefix, and expires with the run.
``GraphRun.context()`` reads it from outside.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from .errors import CeleryGraphError
from .runtime import Engine, decode_value, encode_value
from .store import translate_errors

_APPEND = (resources.files(__package__) / "lua" / "append.lua").read_text()


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not key or ":" in key:
        raise CeleryGraphError(f"run context key {key!r} must be a non-empty string without ':'")
    return key


class RunContext:
    """Shared state of one run. Values are JSON-encoded like results."""

    def __init__(self, engine: Engine, run_id: str, node_id: str | None = None) -> None:
        self.run_id = run_id
        self.node_id = node_id
        self._engine = engine
        self._client: Any = engine.client
        self._key = engine.keys.state(run_id)
        self._ttl = engine.settings.run_ttl

    def __repr__(self) -> str:
        return f"<RunContext run={self.run_id} node={self.node_id}>"

    def _what(self, key: str) -> str:
        return f"node {self.node_id!r}: run context key {key!r}"

    def get(self, key: str, default: Any = None) -> Any:
        raw = translate_errors(
            "reading run context", lambda: self._client.hget(self._key, "v:" + _check_key(key))
        )
        return default if raw is None else decode_value(raw)

    def set(self, key: str, value: Any) -> None:
        encoded = encode_value(value, lambda: self._what(key))
        pipe = self._client.pipeline()
        pipe.hset(self._key, "v:" + _check_key(key), encoded)
        pipe.expire(self._key, self._ttl)
        translate_errors("writing run context", pipe.execute)

    def incr(self, key: str, amount: int | float = 1) -> int | float:
        """Atomically add ``amount`` to a number (missing counts as 0); returns the new value."""
        field = "v:" + _check_key(key)
        pipe = self._client.pipeline()
        if isinstance(amount, int):
            pipe.hincrby(self._key, field, amount)
        else:
            pipe.hincrbyfloat(self._key, field, amount)
        pipe.expire(self._key, self._ttl)
        value, _ = translate_errors("writing run context", pipe.execute)
        return value

    def append(self, key: str, value: Any) -> int:
        """Atomically append to a list; returns its new length."""
        encoded = encode_value(value, lambda: self._what(key))
        return int(translate_errors(
            "writing run context",
            lambda: self._client.eval(_APPEND, 1, self._key, _check_key(key), encoded, self._ttl),
        ))

    def list(self, key: str) -> list[Any]:
        """The items appended to ``key``, in append order."""
        _check_key(key)
        count = translate_errors(
            "reading run context", lambda: self._client.hget(self._key, "n:" + key)
        )
        n = int(count or 0)
        if not n:
            return []
        fields = [f"l:{key}:{i}" for i in range(1, n + 1)]
        raws = translate_errors(
            "reading run context", lambda: self._client.hmget(self._key, fields)
        )
        return [decode_value(r) for r in raws if r is not None]
