"""Run records: creating a run, and every read a client makes of one."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from ..codec import decode_value, error_record, parse_error
from ..errors import RunNotFound, StoreError
from ..keys import RUN_ID_RE, Keys
from ..model import FINAL_STATES, NODE_STATES, GraphSpec, Outcome, RunStatus, count_field
from .connection import WAIT_SLICE, one_server, translated, translating
from .graphs import GraphStore
from .scripts import Piggyback, Scripts
from .workers import bucket_label

# A flow's stats (the dashboard's Flows page): days kept, and the upper bounds (seconds)
# of the run-duration histogram its percentiles are read from.
FLOW_STATS_DAYS = 8
FLOW_DURATION_BUCKETS = (
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1200.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    28800.0,
    86400.0,
)


class RunStore:
    """Run records, the index of runs and the index of running runs."""

    def __init__(
        self,
        client: Any,
        wait_client: Any,
        keys: Keys,
        graphs: GraphStore,
        scripts: Scripts,
        run_ttl: int,
    ) -> None:
        self.client = client  # bytes replies (decode_responses off)
        self._wait_client = wait_client
        self.keys = keys
        self.graphs = graphs
        self.scripts = scripts
        self.run_ttl = run_ttl

    def time(self) -> float:
        """The Redis server's clock: every time comparison in the state uses it."""
        seconds, micros = translated("reading the server time", self.client.time)
        return float(seconds) + micros / 1e6

    # -- starting a run ----------------------------------------------------------------

    def create(
        self,
        run_id: str,
        spec: GraphSpec,
        inputs_json: str,
        *,
        deadline: float | None = None,
        extra: dict[str, str] | None = None,
        waits: bool = False,
        announce: bool = True,
        meanwhile: Callable[[], None] | None = None,
    ) -> tuple[bool, str]:
        """Store the graph, list the run for the reconciler, then create the run with its
        roots marked published and leased (start.lua); the caller publishes the roots.
        ``waits``: the run is created queued for a slot of its concurrency limit instead.
        ``announce``: list it among the runs now (else the caller calls :meth:`announce`
        once it has published: one round trip less before the first message).
        ``meanwhile``: called while start.lua's answer is on its way, when the whole
        creation is that one round trip (a client of one server); else never called.
        Returns (True, its creation time: server time, as text) when created, (False, its
        status) when the run existed."""
        # a run queued for a slot publishes nothing and has nothing to look after but its
        # deadline: without one it is listed when it starts (a lost start is the slot
        # sweep's), so a line of 1,000 runs costs the reconciler nothing
        listed = not waits or deadline is not None
        # the graph stored and the run listed for the reconciler before start.lua: if this
        # process dies before publishing, the reconciler finds the run. Listed again after
        # it: a sweep between the two may have dropped it (no run yet). On one server all
        # of it is start.lua's round trip; on a Cluster the first part is one of its own.
        first = self.graphs.put_commands(spec)
        track = self._track_commands(run_id) if listed else []
        failures: list[Exception] = []
        also = None
        if one_server(self.client):
            also = Piggyback([*first, *track], failures.append, after=track[:1])
        else:
            pipe = self.client.pipeline(transaction=False)
            for command in [*first, *track]:
                pipe.execute_command(*command)
            translated("storing a graph and listing a run", pipe.execute)
        created, detail = self.scripts.start(
            run_id,
            spec,
            inputs_json,
            deadline,
            extra or {},
            waits=waits,
            also=also,
            meanwhile=meanwhile if also is not None else None,
        )
        if failures:  # the graph or the listing not written: the run must not go on
            if created:
                error = error_record(
                    "",
                    "StoreError",
                    StoreError.__module__,
                    f"storing its graph failed: {failures[0]}",
                )
                self.scripts.finish(run_id, "failed", error_json=error, unsent=True)
            with translating("storing a graph and listing a run"):
                raise failures[0]
        self.graphs.remember(spec)
        if not created:
            return False, detail
        if also is None and listed:  # again, as above
            translated("listing a run", lambda: self.client.execute_command(*track[0]))
        if announce:
            self.announce(run_id, float(detail), (extra or {}).get("flow"))
        return True, detail

    def announce(self, run_id: str, created: float, flow: str | None) -> None:
        """List a created run among the runs (by time, and its flow's) for ``runs`` and the
        dashboard: its creator does, once it has published its first messages."""
        pipe = self.client.pipeline(transaction=False)
        self._list(pipe, run_id, created, flow)
        translated("listing a run", pipe.execute)

    def refuse(
        self,
        run_id: str,
        graph_id: str,
        inputs_json: str,
        error_json: str,
        extra: dict[str, str] | None = None,
    ) -> bool:
        """Record a run that could not start as failed with ``error_json`` (its record
        says ``unstarted``: it has no nodes and may have no graph), listed like any run.
        False when a run with this id exists already (a redelivered message)."""
        extra = dict(extra or {})
        recorded, detail = self.scripts.refuse(run_id, graph_id, inputs_json, error_json, extra)
        if not recorded:
            return False
        pipe = self.client.pipeline(transaction=False)
        self._list(pipe, run_id, float(detail), extra.get("flow"))
        if "continuation" in extra:  # the reconciler continues the canvas if this process dies
            pipe.zadd(self.keys.running_index(), {run_id: 0})
            pipe.expire(self.keys.running_index(), self.run_ttl)
        translated("listing a run", pipe.execute)
        return True

    def _list(self, pipe: Any, run_id: str, now: float, flow: str | None) -> None:
        """Queue the listing of a new run: every run by time, and its flow's runs."""
        k = self.keys
        self._index(pipe, k.runs_index(), run_id, now)
        pipe.set(k.index_marker(), repr(now), nx=True)
        pipe.expire(k.index_marker(), self.run_ttl)
        if flow:
            self._index(pipe, k.flow_runs(flow), run_id, now)
            self._index(pipe, k.flows_index(), flow, now)

    def _index(self, pipe: Any, key: str, member: str, score: float) -> None:
        """Add to an index zset, trimmed and expired after the run ttl."""
        pipe.zadd(key, {member: score})
        pipe.zremrangebyscore(key, "-inf", score - self.run_ttl)
        pipe.expire(key, self.run_ttl)

    def index_ended(self, run_id: str, record: dict[str, str] | None = None) -> None:
        """List an ended run under its final state (idempotent: every process that ends a
        run calls it, and the reconciler once more for every ended run). ``record``: the
        run record read since it ended, if the caller has it."""
        record = record or self.record(run_id)
        status = record["status"]
        if status not in FINAL_STATES:
            return
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        for other in FINAL_STATES:
            if other != status:
                pipe.zrem(k.state_runs(other), run_id)
        self._index(pipe, k.state_runs(status), run_id, float(record["created"]))
        replies = translated("indexing a run", pipe.execute)
        added = replies[len(FINAL_STATES) - 1]  # the ZADD: 1 when this call listed it
        if added and record.get("flow") and record.get("finished"):
            self._count_flow_end(record["flow"], status, record)

    def _count_flow_end(self, flow: str, status: str, record: dict[str, str]) -> None:
        """Count an ended run in its flow's stats of the day (the one call that listed it
        under its final state counts it: once per ending)."""
        finished = float(record["finished"])
        duration = max(0.0, finished - float(record["created"]))
        hour = int(finished // 3600)
        key = self.keys.flow_stats(flow, int(finished // 86400))
        fields = {f"{hour}|{status}": 1}
        for le in (*FLOW_DURATION_BUCKETS, float("inf")):
            if duration <= le:
                fields[f"{hour}|b|{bucket_label(le)}"] = 1
                break  # one bucket: the histogram is cumulated when read

        def write() -> None:
            pipe = self.client.pipeline(transaction=False)
            for field, n in fields.items():
                pipe.hincrby(key, field, n)
            pipe.expire(key, FLOW_STATS_DAYS * 86400)
            pipe.execute()

        translated("counting a flow's run", write)

    def index_resumed(self, run_id: str) -> None:
        """A resumed run is running again: off the final-state indexes."""
        pipe = self.client.pipeline(transaction=False)
        for status in FINAL_STATES:
            pipe.zrem(self.keys.state_runs(status), run_id)
        translated("indexing a run", pipe.execute)

    # -- the running index, for the reconciler ---------------------------------------------

    def due(self, now: float, limit: int = 500) -> list[str]:
        """Running runs whose next look is due."""
        ids = translated(
            "reading the running index",
            lambda: self.client.zrangebyscore(self.keys.running_index(), "-inf", now, 0, limit),
        )
        return [i.decode() for i in ids]

    def track(self, run_id: str) -> None:
        """List a run for the reconciler, due at once (a run that starts or resumes)."""
        pipe = self.client.pipeline(transaction=False)
        self._track(pipe, run_id)
        translated("listing a run for the reconciler", pipe.execute)

    def keep_tracked(self, run_id: str) -> None:
        """List a run for the reconciler if it is not (its schedule left as it is)."""
        key = self.keys.running_index()
        translated("listing a run", lambda: self.client.zadd(key, {run_id: 0}, nx=True))

    def _track(self, pipe: Any, run_id: str) -> None:
        for command in self._track_commands(run_id):
            pipe.execute_command(*command)

    def _track_commands(self, run_id: str) -> list[tuple[Any, ...]]:
        """List ``run_id`` for the reconciler, due at once (then its ttl refreshed)."""
        key = self.keys.running_index()
        return [("ZADD", key, 0, run_id), ("EXPIRE", key, self.run_ttl)]

    def schedule(self, run_id: str, when: float) -> None:
        """Look at a running run again at ``when`` (server time)."""
        translated(
            "scheduling a run",
            lambda: self.client.zadd(self.keys.running_index(), {run_id: when}, xx=True),
        )

    def forget(self, run_id: str, gone: Sequence[str] = FINAL_STATES) -> None:
        """A run that ended (or waits for a concurrency slot: its status in ``gone``) and
        needs nothing more leaves the running index. The sweep read that status before;
        a resume (or an admission) may have reopened and listed the run since, and this
        removal would leave it listed nowhere (a node whose publish failed, or lost with
        its worker, never sent again). So the status is read after the removal, and a run
        whose status is no longer in ``gone`` is listed again, due at once: the reopening
        comes before its listing, so either that listing comes after this removal or
        this read sees the reopened run. (Two commands, not one script: on a Redis
        Cluster the index and the run's record are on different slots.)"""
        translated("unlisting a run", lambda: self.client.zrem(self.keys.running_index(), run_id))
        status = translated(
            "reading a run's status", lambda: self.client.hget(self.keys.run(run_id), "status")
        )
        if status is not None and status.decode() not in gone:
            self.track(run_id)

    def sweep_clock(self) -> tuple[float, float | None, float | None]:
        """(the server's time, when the last sweep was or None, the hold after an outage
        or None); see engine/reconcile.py. (Two calls: a Cluster pipeline refuses TIME.)"""
        now = self.time()
        swept, hold = translated(
            "reading the sweep clock",
            lambda: self.client.hmget(self.keys.reconciler_clock(), ["swept", "hold"]),
        )
        return now, float(swept) if swept else None, float(hold) if hold else None

    def mark_swept(self, when: float, hold: float | None = None) -> None:
        """A sweep was done at ``when`` (server time); ``hold``: a new hold (see
        engine/reconcile.py). Kept a run ttl, like the index of running runs."""
        key = self.keys.reconciler_clock()
        fields = {"swept": repr(when)}
        if hold is not None:
            fields["hold"] = repr(hold)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, self.run_ttl)
        translated("writing the sweep clock", pipe.execute)

    def running_count(self) -> int:
        return int(
            translated(
                "reading the running index", lambda: self.client.zcard(self.keys.running_index())
            )
        )

    # -- reading -----------------------------------------------------------------------

    def graph_of(self, run_id: str, record: dict[str, str] | None = None) -> GraphSpec:
        """The graph run ``run_id`` runs; an empty graph for a run that never started
        (:meth:`refuse`: its graph may be the very thing that is missing)."""
        record = record or self.record(run_id)
        if record.get("unstarted"):
            return GraphSpec.empty(record.get("graph", ""))
        return self.graphs.load(record["graph"])

    def started(self, run_id: str) -> bool:
        """A run exists under this id that a new submission must not start again (an
        unsent one may be started afresh)."""
        try:
            record = self.record(run_id)
        except RunNotFound:
            return False
        return not (record.get("status") == "failed" and record.get("unsent") == "1")

    def record(self, run_id: str) -> dict[str, str]:
        return self.record_with_results(run_id)[0]

    def record_with_results(
        self, run_id: str, fields: Sequence[str] = ()
    ) -> tuple[dict[str, str], list[bytes | None]]:
        """The run record and the stored results of ``fields`` (none: the record alone), in
        one round trip: a waiter that knows the run's sinks has its outcome with the
        record that says it ended (``outcome(run_id, record, results)``)."""
        if not RUN_ID_RE.match(run_id or ""):
            raise RunNotFound(f"{run_id!r} is not a run id (32 hex digits)")
        key = self.keys.run(run_id)
        results: list[bytes | None] = []
        if fields:
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(key)
            pipe.hmget(self.keys.results(run_id), list(fields))
            raw, results = translated("reading a run", pipe.execute)
        else:
            raw = translated("reading a run", lambda: self.client.hgetall(key))
        if not raw:
            raise RunNotFound(
                f"no run {run_id} under key prefix {self.keys.prefix!r}: it never started "
                "there, expired (a finished run is kept graph_result_ttl), or was lost with "
                "the graph Redis's data"
            )
        return {k.decode(): v.decode() for k, v in raw.items()}, results

    def slot_of(self, run_id: str, record: dict[str, str] | None = None) -> tuple[str, str] | None:
        """(scope, group) of the concurrency slot a run of a limited flow asks for, or None
        (two fields, not the whole record: every run's end asks; from ``record``, the run
        record, when the caller has read it)."""
        if record is not None:
            scope_text, group_text = record.get("limit_scope"), record.get("limit_group")
            return (scope_text, group_text) if scope_text and group_text else None
        key = self.keys.run(run_id)
        scope, group = translated(
            "reading a run", lambda: self.client.hmget(key, ["limit_scope", "limit_group"])
        )
        return (scope.decode(), group.decode()) if scope and group else None

    # Whole hashes and sets of a run are read with HSCAN / ZSCAN, a page at a time: one
    # HGETALL of a 100,000-node run would hold Redis for everyone else.
    SCAN_PAGE = 2000

    def _hash(self, key: str, what: str) -> dict[bytes, bytes]:
        return dict(
            translated(what, lambda: list(self.client.hscan_iter(key, count=self.SCAN_PAGE)))
        )

    def results(self, run_id: str) -> dict[str, bytes]:
        raw = self._hash(self.keys.results(run_id), "reading results")
        return {k.decode(): v for k, v in raw.items()}

    def result_size(self, run_id: str, field: str) -> int:
        """Bytes of one stored result (0 when none is stored)."""
        key = self.keys.results(run_id)
        return int(translated("reading a result size", lambda: self.client.hstrlen(key, field)))

    def result(self, run_id: str, field: str) -> bytes | None:
        """One stored result, encoded; None when none is stored."""
        key = self.keys.results(run_id)
        value: bytes | None = translated("reading a result", lambda: self.client.hget(key, field))
        return value

    def children(self, run_id: str) -> dict[str, str]:
        """{node id: child run id} of the child runs the run's nodes started."""
        fields = self.node_fields(run_id)
        return {k[: -len(":child")]: v for k, v in fields.items() if k.endswith(":child")}

    def node_fields(self, run_id: str) -> dict[str, str]:
        raw = self._hash(self.keys.nodes(run_id), "reading node states")
        return {k.decode(): v.decode() for k, v in raw.items()}

    def leased(self, run_id: str, field: str, now: float) -> bool:
        """Does ``field`` of the run hold a running or queued lease alive at ``now``?"""
        pipe = self.client.pipeline(transaction=False)
        pipe.zscore(self.keys.leases(run_id), field)
        pipe.zscore(self.keys.queued(run_id), field)
        running, queued = translated("reading leases", pipe.execute)
        return any(score is not None and float(score) > now for score in (running, queued))

    # fields read in one HMGET, at most: a larger read goes in several
    FIELDS_PAGE = 10_000

    def fields_of(self, run_id: str, fields: list[str]) -> dict[str, str]:
        """The node-state fields ``fields`` of the run that exist ({field: value}): a
        part of the node state, whatever the size of the run."""
        key = self.keys.nodes(run_id)
        out: dict[str, str] = {}
        for i in range(0, len(fields), self.FIELDS_PAGE):
            part = fields[i : i + self.FIELDS_PAGE]
            raw = translated("reading node states", lambda: self.client.hmget(key, part))  # noqa: B023
            out.update({f: v.decode() for f, v in zip(part, raw) if v is not None})
        return out

    def leases_of(self, run_id: str, fields: list[str]) -> dict[str, float]:
        """{field: lease expiry} of those of ``fields`` that hold a running or queued
        lease."""
        if not fields:
            return {}
        pipe = self.client.pipeline(transaction=False)
        pipe.zmscore(self.keys.queued(run_id), fields)
        pipe.zmscore(self.keys.leases(run_id), fields)
        queued, running = translated("reading leases", pipe.execute)
        out: dict[str, float] = {}
        for scores in (queued, running):
            out.update({f: float(s) for f, s in zip(fields, scores) if s is not None})
        return out

    def leases(self, run_id: str) -> dict[str, float]:
        """{field: lease expiry} of every running and queued lease of the run."""

        def scan(key: str) -> list[tuple[bytes, float]]:
            return list(self.client.zscan_iter(key, count=self.SCAN_PAGE))

        out: dict[str, float] = {}
        for key in (self.keys.queued(run_id), self.keys.leases(run_id)):
            found = translated("reading leases", lambda: scan(key))  # noqa: B023
            out.update({k.decode(): float(v) for k, v in found})
        return out

    def map_arrivals(self, run_id: str, node_id: str) -> set[int]:
        """The units of map node ``node_id`` whose arrival is counted (map_arrive.lua)."""
        key = self.keys.map(run_id, node_id)
        found = translated("reading a map's arrivals", lambda: self.client.smembers(key))
        return {int(u) for u in found}

    def status(self, run_id: str, spec: GraphSpec) -> RunStatus:
        record = self.record(run_id)
        return RunStatus.from_state(
            run_id,
            record,
            self.node_fields(run_id),
            spec.order,
            self.leases(run_id),
            self.time(),
            spec.roles,
            position=self.position(run_id, record),
        )

    def position(self, run_id: str, record: dict[str, str]) -> int | None:
        """A queued run's place among the runs waiting for a slot of its concurrency limit
        (1: next), else None."""
        scope, group = record.get("limit_scope"), record.get("limit_group")
        if record.get("status") != "queued" or not scope or not group:
            return None
        queue = self.keys.limit_layout(scope, group).queue
        rank = translated("reading a queue position", lambda: self.client.zrank(queue, run_id))
        return None if rank is None else int(rank) + 1

    def counts(self, run_id: str) -> dict[str, int]:
        """{state: how many of the run's graph nodes are in it}, as the scripts keep them
        (model NODE_STATES; no node is read, whatever the size of the run)."""
        key = self.keys.nodes(run_id)
        raw = translated(
            "reading node counts",
            lambda: self.client.hmget(key, [count_field(s) for s in NODE_STATES]),
        )
        return {s: int(v) for s, v in zip(NODE_STATES, raw) if v is not None}

    def summary(self, run_id: str) -> RunStatus:
        """The run's state and its counts by state (RunStatus.summarised): a few keys read,
        whatever the size of the run."""
        record = self.record(run_id)
        if not record.get("counted") and not record.get("unstarted"):
            # started by a version that kept no counts: every node is read
            return self.status(run_id, self.graph_of(run_id, record))
        return RunStatus.summarised(
            run_id,
            record,
            self.counts(run_id),
            self.time(),
            position=self.position(run_id, record),
        )

    def outcome(
        self,
        run_id: str,
        record: dict[str, str] | None = None,
        results: tuple[Sequence[str], Sequence[bytes | None]] | None = None,
    ) -> Outcome | None:
        """How the run ended (None while it runs): the sinks' results, or its error.
        ``results``: (fields, their results) read with ``record``; used when the fields
        are the run's sinks, else the results are read."""
        record = record or self.record(run_id)
        state = record["status"]
        if state not in FINAL_STATES:
            return None
        if state != "succeeded":
            return Outcome(run_id, state, error=parse_error(record.get("error")))
        sinks = json.loads(record["sinks"])
        if results is not None and list(results[0]) == sinks and len(results[1]) == len(sinks):
            raws = list(results[1])
        else:
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

    def wait(self, run_id: str, seconds: float) -> Outcome | None:
        """Block up to ``seconds`` (at most WAIT_SLICE) on the run's completion signal.
        The outcome when the signal carries it (a run that succeeded with small results),
        else None: the run may have ended all the same (read its record)."""
        done = self.keys.done(run_id)
        # BLMOVE from the list to itself rotates the signal, so every waiter sees it.
        signal = translated(
            "waiting for a run",
            lambda: self._wait_client().blmove(
                done, done, min(seconds, WAIT_SLICE), "LEFT", "RIGHT"
            ),
        )
        return signalled(run_id, signal)


def signalled(run_id: str, signal: bytes | None) -> Outcome | None:
    """The outcome a run's completion signal carries: a run that succeeded with a few small
    results has them in it (``done_signal`` in lib/run.lua: ``succeeded``, the record's
    sinks, then each result as ``<bytes>:<result>`` or ``-`` for none); None for any
    other signal, or none."""
    if not signal or not signal.startswith(b"succeeded\n"):
        return None
    try:
        _, sinks_json, rest = signal.split(b"\n", 2)
        sinks = json.loads(sinks_json)
        values: dict[str, Any] = {}
        at = 0
        for sink in sinks:
            if rest[at : at + 1] == b"-":
                values[sink], at = None, at + 1
                continue
            colon = rest.index(b":", at)
            end = colon + 1 + int(rest[at:colon])
            values[sink], at = decode_value(rest[colon + 1 : end]), end
    except ValueError:  # not this layout (json.JSONDecodeError is a ValueError)
        return None
    if not sinks or at != len(rest):
        return None
    return Outcome(run_id, "succeeded", values[sinks[0]] if len(sinks) == 1 else values)
