"""Schedules (``schedule()``): what each one did, and whether it is paused.

One hash per schedule (``P:schedule:{name}``): its flow, overlap policy, period, last
fire, last run, next fire, skips (and why the last one was skipped), paused; and an index
of schedules by last fire. The worker that takes a fire decides it under a lock of the
schedule (client/schedules.py), so two fires of one schedule never decide at once.
"""

from __future__ import annotations

from typing import Any

from ..keys import Keys
from .connection import translated

# a schedule's record outlives a year of quiet (a yearly entry keeps its last fire)
SCHEDULE_TTL = 400 * 86400
# fields of a schedule's hash that hold numbers (server time, or a count)
NUMBERS = ("last_fire", "next_fire", "last_skip", "skips", "runs", "catchup", "paused_at")


class ScheduleStore:
    """The schedules under one key prefix."""

    def __init__(self, client: Any, keys: Keys, ttl: int) -> None:
        self.client = client
        self.keys = keys
        self.ttl = ttl

    def get(self, name: str) -> dict[str, Any] | None:
        """Schedule ``name`` as recorded, or None when it never fired (nor was paused)."""
        raw = translated(
            "reading a schedule", lambda: self.client.hgetall(self.keys.schedule(name))
        )
        return _parsed(raw) if raw else None

    def all(self) -> list[dict[str, Any]]:
        """Every schedule recorded, by name."""
        names = translated(
            "listing schedules",
            lambda: self.client.zrange(self.keys.schedules_index(), 0, -1),
        )
        out = []
        for raw_name in names:
            found = self.get(raw_name.decode())
            if found is not None:
                out.append(found)
        return sorted(out, key=lambda s: s.get("name", ""))

    def record(self, name: str, fields: dict[str, Any], *, skips: int = 0) -> None:
        """Write ``fields`` of schedule ``name`` (and count ``skips`` more skips);
        the schedule and the index are kept ``ttl`` after the last write."""
        key = self.keys.schedule(name)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, mapping={"name": name, **{k: str(v) for k, v in fields.items()}})
        if skips:
            pipe.hincrby(key, "skips", skips)
        pipe.expire(key, self.ttl)
        pipe.zadd(self.keys.schedules_index(), {name: float(fields.get("last_fire", 0) or 0)})
        pipe.expire(self.keys.schedules_index(), self.ttl)
        translated("recording a schedule", pipe.execute)

    def set_paused(self, name: str, paused: bool, now: float) -> bool:
        """Pause or resume schedule ``name``; False when no schedule of that name was ever
        recorded (a typo: nothing is written)."""
        key = self.keys.schedule(name)
        if not translated("reading a schedule", lambda: self.client.exists(key)):
            return False
        fields = {"paused": "1", "paused_at": repr(now)} if paused else {"paused": ""}
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, self.ttl)
        translated("pausing a schedule", pipe.execute)
        return True


def _parsed(raw: dict[bytes, bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        name, text = k.decode(), v.decode()
        if name in NUMBERS:
            out[name] = float(text) if text else None
        else:
            out[name] = text
    out["paused"] = out.get("paused") == "1"
    out["skips"] = int(out.get("skips") or 0)
    out["runs"] = int(out.get("runs") or 0)
    return out
