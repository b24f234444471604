"""Shared state of a run (what ``RunContext`` reads and writes): one Redis hash per run.

Fields: ``v:<key>`` a value, ``n:<key>`` the length of a list, ``l:<key>:<i>`` its items;
every value is JSON, encoded by the caller. Writes go through shared.lua, which refuses a
run that is gone and never lets the state outlive its run.
"""

from __future__ import annotations

from typing import Any

from ..errors import RunNotFound
from ..keys import Keys
from .connection import load_script, redis_errors, translated, translating


class SharedState:
    def __init__(self, client: Any, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._write = client.register_script(load_script("shared"))

    def _call(self, run_id: str, op: str, key: str, value: Any) -> Any:
        keys = list(self.keys.run_layout(run_id))
        try:
            with translating("writing run context"):
                return self._write(keys=keys, args=[op, key, value])
        except redis_errors().ResponseError as exc:
            raise RunNotFound(f"run {run_id}: {exc}; its shared state is not written") from exc

    def get(self, run_id: str, key: str) -> bytes | None:
        return translated(
            "reading run context", lambda: self.client.hget(self.keys.state(run_id), "v:" + key)
        )

    def set(self, run_id: str, key: str, encoded: str) -> None:
        self._call(run_id, "set", key, encoded)

    def incr(self, run_id: str, key: str, amount: int | float) -> int | float:
        if isinstance(amount, int):
            return int(self._call(run_id, "incr", key, amount))
        return float(self._call(run_id, "incrbyfloat", key, repr(float(amount))))

    def append(self, run_id: str, key: str, encoded: str) -> int:
        return int(self._call(run_id, "append", key, encoded))

    def items(self, run_id: str, key: str) -> list[bytes]:
        state = self.keys.state(run_id)
        count = translated("reading run context", lambda: self.client.hget(state, "n:" + key))
        n = int(count or 0)
        if not n:
            return []
        fields = [f"l:{key}:{i}" for i in range(1, n + 1)]
        raws = translated("reading run context", lambda: self.client.hmget(state, fields))
        return [r for r in raws if r is not None]
