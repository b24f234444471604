"""Shared state of a run (what ``RunContext`` reads and writes): one Redis hash per run.

Fields: ``v:<key>`` a value, ``n:<key>`` the length of a list, ``l:<key>:<i>`` its items;
every value is JSON, encoded by the caller.
"""

from __future__ import annotations

from typing import Any

from ..keys import Keys
from .connection import load_script, translated


class SharedState:
    def __init__(self, client: Any, keys: Keys, run_ttl: int) -> None:
        self.client = client
        self.keys = keys
        self.ttl = run_ttl
        self._append = client.register_script(load_script("append"))

    def get(self, run_id: str, key: str) -> bytes | None:
        return translated(
            "reading run context", lambda: self.client.hget(self.keys.state(run_id), "v:" + key)
        )

    def set(self, run_id: str, key: str, encoded: str) -> None:
        state = self.keys.state(run_id)
        pipe = self.client.pipeline()
        pipe.hset(state, "v:" + key, encoded)
        pipe.expire(state, self.ttl)
        translated("writing run context", pipe.execute)

    def incr(self, run_id: str, key: str, amount: int | float) -> int | float:
        state = self.keys.state(run_id)
        pipe = self.client.pipeline()
        if isinstance(amount, int):
            pipe.hincrby(state, "v:" + key, amount)
        else:
            pipe.hincrbyfloat(state, "v:" + key, amount)
        pipe.expire(state, self.ttl)
        value, _ = translated("writing run context", pipe.execute)
        return value

    def append(self, run_id: str, key: str, encoded: str) -> int:
        state = self.keys.state(run_id)
        return int(translated(
            "writing run context",
            lambda: self._append(keys=[state], args=[key, encoded, self.ttl]),
        ))

    def items(self, run_id: str, key: str) -> list[bytes]:
        state = self.keys.state(run_id)
        count = translated("reading run context", lambda: self.client.hget(state, "n:" + key))
        n = int(count or 0)
        if not n:
            return []
        fields = [f"l:{key}:{i}" for i in range(1, n + 1)]
        raws = translated("reading run context", lambda: self.client.hmget(state, fields))
        return [r for r in raws if r is not None]
