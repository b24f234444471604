"""The worker registry, per-worker task counters and run counters, as stored in Redis.

    P:worker:{W}           hash  hostname, pid, node, token, queues (JSON), started,
                                 heartbeat, state, held (JSON: "<run id>:<field>" of
                                 each node message the worker holds, reserved or active)
    P:worker:{W}:metrics   hash  counters and histograms written by the pool processes
    P:workers              zset  hostname -> last heartbeat (the listing index)
    P:metrics:runs         hash  run counters and the run-duration histogram

``W`` is the worker's Celery hostname (``-n``). A worker's two keys share the ``{W}`` hash
tag, so the Lua scripts that touch both stay in one Redis Cluster slot; the index is
updated by separate commands. Every time stored or compared is the Redis server's
(``TIME``), never a host's clock. Every key expires ``ttl`` seconds after the last
heartbeat, so a worker that dies without cleaning up, even by SIGKILL, drops out.

Counter fields of ``P:worker:{W}:metrics``: ``processed``, ``succeeded``, ``failed``,
``retried``, ``runtime_total``, ``in_flight``, and per task and queue
``n|<task>|<queue>|<outcome>`` (tasks by outcome), ``b|<task>|<queue>|<le>`` (cumulative
duration buckets, ``+Inf`` included), ``s|<task>|<queue>`` (summed seconds).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..compat import version_tuple
from ..errors import StoreError
from ..keys import CounterKeys, Keys
from .connection import load_script, translated
from .replies import Beat, NameClaim

REDIS_REQUIRED = (6, 2)  # GETEX, BLMOVE, ZRANGE BYSCORE...


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def bucket_label(le: float) -> str:
    return "+Inf" if le == float("inf") else repr(float(le))


@functools.lru_cache(maxsize=4096)
def _bucket_fields(prefix: str, buckets: tuple[float, ...]) -> tuple[tuple[float, str], ...]:
    """(upper bound, field name) of each bucket of a histogram, ``+Inf`` last: named once
    per series, not once per task (a no-op task's duration falls in every bucket)."""
    return tuple((le, f"{prefix}|{bucket_label(le)}") for le in (*buckets, float("inf")))


def task_counts(
    task: str,
    queue: str,
    outcome: str,
    runtime: float | None,
    buckets: Sequence[float],
    waited: float | None = None,
    wait_buckets: Sequence[float] = (),
) -> tuple[dict[str, int], dict[str, float]]:
    """The counters one task adds to its worker's hash: (whole numbers, floats);
    ``waited``: a node's time in its queue, sent to started (server time)."""
    series = f"{task}|{queue}"
    whole = {"processed": 1, f"n|{series}|{outcome}": 1}
    if outcome in ("succeeded", "failed", "retried"):
        whole[outcome] = 1
    floats: dict[str, float] = {}
    if runtime is not None:
        floats = {"runtime_total": runtime, f"s|{series}": runtime}
        for le, field in _bucket_fields(f"b|{series}", tuple(buckets)):
            if runtime <= le:
                whole[field] = 1
    if waited is not None:
        floats[f"ws|{queue}"] = waited
        for le, field in _bucket_fields(f"wb|{queue}", tuple(wait_buckets)):
            if waited <= le:
                whole[field] = 1
    return whole, floats


def run_counts(
    event: str, duration: float | None, buckets: Sequence[float], flow: str = ""
) -> tuple[dict[str, int], dict[str, float]]:
    """The counters a run of ``flow`` ("" for none) adds when it starts (``event``
    "started") or ends ("succeeded", "failed", "cancelled") after ``duration`` seconds:
    (whole numbers, floats), per flow (fields ``f|<flow>|...``)."""
    series = f"f|{flow}"
    whole = {f"{series}|{event}": 1}
    floats: dict[str, float] = {}
    if duration is not None:
        floats[f"{series}|s"] = duration
        for le in (*buckets, float("inf")):
            if duration <= le:
                whole[f"{series}|b|{bucket_label(le)}"] = 1
    return whole, floats


@dataclass(frozen=True)
class Claim:
    """What registering a worker name found."""

    claimed: bool
    now: float  # server time
    owner_token: str = ""
    owner_pid: int = 0
    owner_node: str = ""
    owner_age: float = 0.0  # seconds since the live owner's last heartbeat


class WorkerStore:
    def __init__(self, client: Any, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._claim = client.register_script(load_script("worker_claim"))
        self._beat = client.register_script(load_script("worker_beat"))
        self._leave = client.register_script(load_script("worker_leave"))
        self._count = client.register_script(load_script("count"))

    # -- the server ------------------------------------------------------------------

    def server_time(self) -> float:
        sec, usec = translated("reading the server time", self.client.time)
        return int(sec) + int(usec) / 1e6

    def server_version(self) -> str:
        """The Redis server version (the lowest of a cluster's nodes)."""
        info = translated("reading the server version", lambda: self.client.info("server"))
        if "redis_version" in info:
            return str(info["redis_version"])
        versions = [
            str(v["redis_version"])
            for v in info.values()
            if isinstance(v, dict) and "redis_version" in v
        ]
        return min(versions, key=version_tuple) if versions else "unknown"

    # -- the registry ----------------------------------------------------------------

    def _pair(self, hostname: str) -> list[str]:
        return list(self.keys.worker_layout(hostname))

    def claim(
        self,
        hostname: str,
        token: str,
        fields: dict[str, Any],
        ttl: int,
        live_window: float,
        *,
        in_flight: int | None = None,
        force: bool = False,
    ) -> Claim:
        """Register ``hostname`` for the worker ``token`` unless a live worker holds it;
        the entry is complete from this first write (``in_flight`` included)."""
        flat: list[Any] = []
        for k, v in fields.items():
            flat += [k, v]
        reply = translated(
            "registering the worker",
            lambda: self._claim(
                keys=self._pair(hostname),
                args=[
                    token,
                    ttl,
                    live_window,
                    "1" if force else "",
                    "" if in_flight is None else in_flight,
                    *flat,
                ],
            ),
        )
        reply = [_text(x) for x in reply]
        if reply[0] == NameClaim.CLAIMED:
            self._index(hostname, float(reply[1]), ttl)
            return Claim(True, float(reply[1]))
        return Claim(False, 0.0, reply[1], int(reply[2] or 0), reply[3], float(reply[4]))

    def beat(
        self, hostname: str, token: str, fields: dict[str, Any], in_flight: int | None, ttl: int
    ) -> bool:
        """Refresh the entry; False when another worker holds the name now."""
        flat: list[Any] = []
        for k, v in fields.items():
            flat += [k, v]
        reply = translated(
            "writing a heartbeat",
            lambda: self._beat(
                keys=self._pair(hostname),
                args=[token, ttl, "" if in_flight is None else in_flight, *flat],
            ),
        )
        status, now = Beat(_text(reply[0])), float(_text(reply[1]))
        if status == Beat.OK:
            self._index(hostname, now, ttl)
        return status == Beat.OK

    def _index(self, hostname: str, now: float, ttl: int) -> None:
        index = self.keys.workers_index()
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(index, {hostname: now})
        pipe.zremrangebyscore(index, "-inf", now - ttl)
        pipe.expire(index, ttl)
        translated("indexing the worker", pipe.execute)

    def remove(self, hostname: str, token: str) -> None:
        translated(
            "removing a worker", lambda: self._leave(keys=self._pair(hostname), args=[token])
        )
        translated(
            "removing a worker", lambda: self.client.zrem(self.keys.workers_index(), hostname)
        )

    def live(self) -> tuple[float, list[tuple[str, dict[str, str], dict[str, str]]]]:
        """(server time, [(hostname, entry, counters)]) of every listed worker whose entry
        still exists."""

        def read() -> tuple[float, list[tuple[str, dict[str, str], dict[str, str]]]]:
            hostnames = [_text(h) for h in self.client.zrange(self.keys.workers_index(), 0, -1)]
            pipe = self.client.pipeline(transaction=False)
            for h in hostnames:
                pipe.hgetall(self.keys.worker(h))
                pipe.hgetall(self.keys.worker_metrics(h))
            replies = pipe.execute() if hostnames else []
            out = []
            for i, h in enumerate(hostnames):
                entry = {_text(k): _text(v) for k, v in replies[2 * i].items()}
                if entry:  # else expired between the two reads, or never fully written
                    counters = {_text(k): _text(v) for k, v in replies[2 * i + 1].items()}
                    out.append((h, entry, counters))
            return self.server_time(), out

        return translated("reading the worker registry", read)

    def held(self) -> set[str]:
        """ "<run id>:<field>" of every node message a listed worker holds (prefetched,
        reserved or running), as its last heartbeat said; a worker whose entry expired
        holds nothing."""

        def read() -> set[str]:
            hostnames = [_text(h) for h in self.client.zrange(self.keys.workers_index(), 0, -1)]
            if not hostnames:
                return set()
            pipe = self.client.pipeline(transaction=False)
            for h in hostnames:
                pipe.hget(self.keys.worker(h), "held")
            out: set[str] = set()
            for raw in pipe.execute():
                if raw:
                    try:
                        units = json.loads(raw)
                    except ValueError:
                        continue  # written by something else: holds nothing we can read
                    if isinstance(units, list):
                        out.update(u for u in units if isinstance(u, str))
            return out

        return translated("reading what workers hold", read)

    # -- counters --------------------------------------------------------------------

    def count_task(
        self,
        hostname: str,
        task: str,
        queue: str,
        outcome: str,
        runtime: float | None,
        buckets: Sequence[float],
        ttl: int,
        waited: float | None = None,
        wait_buckets: Sequence[float] = (),
    ) -> None:
        """One task ran to an end state (``outcome``: succeeded, failed, retried or other)
        in a pool process of ``hostname``; ``waited``: a node's time in its queue."""
        whole, floats = task_counts(task, queue, outcome, runtime, buckets, waited, wait_buckets)
        self.add_task_counts(hostname, whole, floats, ttl)

    def add_task_counts(
        self, hostname: str, whole: dict[str, int], floats: dict[str, float], ttl: int
    ) -> None:
        """Add the counts of some tasks of ``hostname`` (added up by :func:`task_counts`
        in the process that ran them) in one step."""
        self._add(CounterKeys(self.keys.worker_metrics(hostname)), whole, floats, ttl, "tasks")

    def counters(self, hostname: str) -> dict[str, float]:
        raw = translated(
            "reading worker counters",
            lambda: self.client.hgetall(self.keys.worker_metrics(hostname)),
        )
        return {_text(k): float(v) for k, v in raw.items()}

    def count_run(
        self,
        event: str,
        duration: float | None,
        buckets: Sequence[float],
        ttl: int,
        flow: str = "",
    ) -> None:
        """A run of ``flow`` started (``event`` "started") or ended ("succeeded", "failed",
        "cancelled") after ``duration`` seconds."""
        whole, floats = run_counts(event, duration, buckets, flow)
        self.add_run_counts(whole, floats, ttl)

    def add_run_counts(self, whole: dict[str, int], floats: dict[str, float], ttl: int) -> None:
        """Add the counts of some runs (added up by :func:`run_counts`) in one step."""
        self._add(CounterKeys(self.keys.run_metrics()), whole, floats, ttl, "runs")

    def count_semantics(self, event: str, ttl: int) -> None:
        """One more ``event`` among the run counters: "signals", "wait_timeouts",
        "children", or "step|<role>|<outcome>" (a handler or a compensation ended).
        Never raises: a counter is not worth failing a run for."""
        try:
            self._add(CounterKeys(self.keys.run_metrics()), {event: 1}, {}, ttl, event)
        except StoreError:
            logging.getLogger("celery_graph").warning("celery-graph: could not count %s", event)

    def count_reconciler(self, counts: dict[str, int], ttl: int) -> None:
        """What a reconciler sweep did, deployment-wide (fields ``r|<what>``): nodes sent
        again, nodes whose worker was lost, leases that ran out and were acted on."""
        whole = {f"r|{what}": n for what, n in counts.items() if n}
        if whole:
            self._add(CounterKeys(self.keys.run_metrics()), whole, {}, ttl, "a sweep")

    def _add(
        self,
        keys: CounterKeys,
        whole: dict[str, int],
        floats: dict[str, float],
        ttl: int,
        what: str,
    ) -> None:
        """Add to counters of one hash in one step (count.lua) and renew its TTL."""
        args: list[Any] = [ttl, len(whole)]
        for field, amount in (*whole.items(), *floats.items()):
            args += [field, amount]
        translated(f"counting {what}", lambda: self._count(keys=list(keys), args=args))

    def claim_exporter(self, hostname: str, ttl: int) -> bool:
        """True when ``hostname`` serves the deployment-wide metrics: it held the lease or
        took it (nobody held it); the holder renews it for ``ttl`` seconds."""
        key = self.keys.metrics_exporter()

        def claim() -> bool:
            if self.client.set(key, hostname, nx=True, ex=ttl):
                return True
            if _text(self.client.get(key) or b"") == hostname:
                self.client.expire(key, ttl)
                return True
            return False

        return bool(translated("claiming the metrics exporter", claim))

    def release_exporter(self, hostname: str) -> None:
        """Give the exporter lease up, if ``hostname`` holds it (a worker that stops)."""
        key = self.keys.metrics_exporter()

        def release() -> None:
            if _text(self.client.get(key) or b"") == hostname:
                self.client.delete(key)

        translated("releasing the metrics exporter", release)

    def run_counters(self) -> dict[str, float]:
        raw = translated(
            "reading run counters", lambda: self.client.hgetall(self.keys.run_metrics())
        )
        return {_text(k): float(v) for k, v in raw.items()}
