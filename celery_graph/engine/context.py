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

from typing import Any

from ..codec import decode_value, encode_value
from ..errors import CeleryGraphError
from ..state import State


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not key or ":" in key:
        raise CeleryGraphError(f"run context key {key!r} must be a non-empty string without ':'")
    return key


class RunContext:
    """Shared state of one run. Values are JSON-encoded like results."""

    def __init__(self, state: State, run_id: str, node_id: str | None = None) -> None:
        self.run_id = run_id
        self.node_id = node_id
        self._shared = state.shared

    def __repr__(self) -> str:
        return f"<RunContext run={self.run_id} node={self.node_id}>"

    def _encode(self, key: str, value: Any) -> str:
        return encode_value(value, lambda: f"node {self.node_id!r}: run context key {key!r}")

    def get(self, key: str, default: Any = None) -> Any:
        raw = self._shared.get(self.run_id, _check_key(key))
        return default if raw is None else decode_value(raw)

    def set(self, key: str, value: Any) -> None:
        self._shared.set(self.run_id, _check_key(key), self._encode(key, value))

    def incr(self, key: str, amount: int | float = 1) -> int | float:
        """Atomically add ``amount`` to a number (missing counts as 0); returns the new value."""
        return self._shared.incr(self.run_id, _check_key(key), amount)

    def append(self, key: str, value: Any) -> int:
        """Atomically append to a list; returns its new length."""
        return self._shared.append(self.run_id, _check_key(key), self._encode(key, value))

    def list(self, key: str) -> list[Any]:
        """The items appended to ``key``, in append order."""
        return [decode_value(r) for r in self._shared.items(self.run_id, _check_key(key))]
