"""Node bookkeeping, the join barrier and leases: thin wrappers over the Lua scripts in
``lua/``.

Each script documents its KEYS and ARGV in its header. Every key a script touches is
passed in KEYS and belongs to one run, so all of them share the run's ``{run_id}`` hash
tag. Every script takes the run's keys first, in the one order ``Keys.run_layout`` builds
(``_run`` passes them; lua/lib/run.lua names them ``K``), then its own. Every time a
script compares or records is the Redis server's clock (``TIME``, lua/lib/clock.lua).
The scripts' answers are decoded here into ``replies``' values and enums.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import Settings
from ..errors import BarrierError, RunNotResumable
from ..keys import Keys
from ..model import GraphSpec, NodeSpec
from .connection import (
    load_script,
    one_server,
    packed,
    pooled_connection,
    redis_errors,
    translating,
)
from .replies import (
    After,
    Arrival,
    Begin,
    Begun,
    ChildMark,
    Continuation,
    Ended,
    Expiry,
    Finish,
    Fused,
    Mode,
    Reclaim,
    Revoked,
    Signal,
    StepEnd,
    Stored,
    Verdict,
    Wait,
)

# The most successors, items or fields one call handles: a call stays a few milliseconds
# long at 100,000 nodes, so it never blocks Redis for everyone else.
PART = 500

SCRIPTS = (
    "start",
    "refuse",
    "begin",
    "complete",
    "complete_begin",
    "trace",
    "finish",
    "resume",
    "map_arrive",
    "item",
    "expand",
    "reclaim",
    "lease",
    "continue",
    "revoke",
    "after",
    "wait",
    "signal",
    "child",
    "admit",
    "park",
    "attempt",
)


@dataclass
class Piggyback:
    """Commands for the same Redis server sent in the round trip of the next script call
    that takes them: ``commands`` before the script, ``after`` it, in that order on one
    connection (a node's result written to the app's result backend when that backend is
    this server: engine/results.py; a new run's graph and listing: runs.py). Only for a
    client of one server (``one_server``): a Cluster would send them to other nodes, in no
    order. They go once: ``sent`` is set when they went. The script runs whatever they
    answer; ``failed`` is told of the first that failed."""

    commands: list[tuple[Any, ...]]
    failed: Callable[[Exception], None]
    after: list[tuple[Any, ...]] = field(default_factory=list)
    sent: bool = field(default=False)


def _script_reply(replies: list[Any], at: int, also: Piggyback | None) -> Any:
    """The script's reply, number ``at`` of a round trip's ``replies``; ``also.failed``
    told of the first of the others that failed."""
    reply = replies.pop(at)
    failed = next((r for r in replies if isinstance(r, Exception)), None)
    if failed is not None and also is not None:
        also.failed(failed)
    return reply


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Scripts:
    """Runs the scripts against one Redis client under one key prefix."""

    def __init__(self, client: Any, keys: Keys, settings: Settings) -> None:
        self._client = client
        self.keys = keys
        self.settings = settings
        self._scripts = {name: client.register_script(load_script(name)) for name in SCRIPTS}
        # a client of one server: its calls are written and read here (_overlapped)
        self._direct = one_server(client)
        # the scripts that have answered this process (the server held them then)
        self._answered: set[str] = set()

    def _run(
        self,
        name: str,
        run_id: str,
        args: list[Any],
        own: Sequence[str] = (),
        also: Piggyback | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> Any:
        """Run script ``name`` on run ``run_id``: the run's keys, then the script's own;
        ``also``'s commands first, in the same round trip, unless they went already.
        ``meanwhile``: called once the call is sent, before its answer is read, on a client
        of one server (see :meth:`_overlapped`); on any other never called (the caller
        sends after the answer what it would have sent meanwhile).

        On a client of one server every call goes through :meth:`_overlapped`, which
        writes the commands and reads the answers itself: redis-py's script object and
        pipeline cost 15 to 20 µs more a call (begin.lua's round trip 127 against 112 µs
        here: they pack each command their way, and wrap each in their retry, which on a
        connection retries nothing by default); a Redis Cluster's calls are redis-py's."""
        keys = [*self.keys.run_layout(run_id), *own]
        script = self._scripts[name]
        if not self._direct:
            meanwhile = None
        with translating(f"running {name}.lua"):
            # A script's first call from this process: the server may not hold it yet (a
            # new server, a restart, SCRIPT FLUSH). Its NOSCRIPT answer would come after
            # what ``meanwhile`` sent had left, and a message that reached a worker before
            # the script was loaded and called again would wait for it (NodeMessage.ahead:
            # 5, 20, 100, 300 ms). So ``meanwhile`` follows the answer then.
            first = name not in self._answered
            if self._direct:
                reply = self._overlapped(script, keys, args, also, None if first else meanwhile)
            elif also is None or also.sent:
                reply = script(keys=keys, args=args)
            else:
                reply = self._run_after(script, keys, args, also)
            self._answered.add(name)
            if first and meanwhile is not None:
                meanwhile()
            return reply

    def _run_after(self, script: Any, keys: list[str], args: list[Any], also: Piggyback) -> Any:
        """``also``'s commands, then ``script``, then ``also.after``, in one pipeline (no
        transaction: the script alone is atomic, as always). EVALSHA, not the Script
        object, because redis-py's pipeline asks SCRIPT EXISTS first, a round trip of its
        own. A server that lost the script (a restart, SCRIPT FLUSH) answers NOSCRIPT: the
        script is loaded and runs again, followed by ``after`` again (what follows it
        must: a new run's listing for the reconciler, which a sweep in between drops)."""
        also.sent = True
        reply = self._pipelined(script, keys, args, also.commands, also)
        if isinstance(reply, redis_errors().NoScriptError):
            reply = self._reloaded(script, keys, args, also)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def _reloaded(
        self, script: Any, keys: list[str], args: list[Any], also: Piggyback | None
    ) -> Any:
        """After NOSCRIPT: ``script`` loaded and run again, followed by ``also.after``
        again; its reply, an exception included."""
        self._client.script_load(script.script)
        if also is None:
            return script(keys=keys, args=args)
        return self._pipelined(script, keys, args, [], also)

    def _overlapped(
        self,
        script: Any,
        keys: list[str],
        args: list[Any],
        also: Piggyback | None,
        meanwhile: Callable[[], None] | None,
    ) -> Any:
        """``also``'s commands, ``script`` (EVALSHA) and ``also.after`` written to one
        connection, then ``meanwhile()`` (if given) while Redis runs them, then their
        answers read: the time of the round trip spent on something else (a message to
        the broker).
        The commands reach the server before anything ``meanwhile`` sends. A connection
        that fails on the way is dropped, not reused; a server that lost the script loads
        it and runs it again, followed by ``after`` again, as :meth:`_run_after` does."""
        client = self._client
        before, after = [], []
        if also is not None and not also.sent:
            before, after = list(also.commands), list(also.after)
            also.sent = True
        commands = [*before, ("EVALSHA", script.sha, len(keys), *keys, *args), *after]
        pool = client.connection_pool
        conn = pooled_connection(pool)
        replies: list[Any] = []
        try:
            conn.send_packed_command(packed(conn, commands))
            try:
                if meanwhile is not None:
                    meanwhile()
            finally:  # the answers are read whatever meanwhile did: the call was made
                for command in commands:
                    try:
                        replies.append(client.parse_response(conn, command[0]))
                    except redis_errors().ResponseError as exc:
                        replies.append(exc)
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        reply = _script_reply(replies, len(before), also)
        if isinstance(reply, redis_errors().NoScriptError):  # ``after`` again only if sent
            reply = self._reloaded(script, keys, args, also if after else None)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def _pipelined(
        self,
        script: Any,
        keys: list[str],
        args: list[Any],
        before: list[tuple[Any, ...]],
        also: Piggyback,
    ) -> Any:
        """``before``, ``script`` (EVALSHA) and ``also.after`` in one pipeline; the
        script's reply, an exception included; ``also.failed`` told of the first command
        of the others that failed."""
        pipe = self._client.pipeline(transaction=False)
        for command in before:
            pipe.execute_command(*command)
        pipe.evalsha(script.sha, len(keys), *keys, *args)
        for command in also.after:
            pipe.execute_command(*command)
        return _script_reply(pipe.execute(raise_on_error=False), len(before), also)

    # -- a run ---------------------------------------------------------------------------

    def start(
        self,
        run_id: str,
        spec: GraphSpec,
        inputs_json: str,
        deadline: float | None,
        extra: dict[str, str],
        waits: bool = False,
        also: Piggyback | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> tuple[bool, str]:
        """Create the run (``waits``: queued for a slot of its flow's concurrency limit,
        nothing marked); (True, server time) when created, (False, status) when a run
        with this id exists already. ``also``: sent in the same round trip.
        ``meanwhile``: called while the answer is on its way, on a client of one server
        (:meth:`_overlapped`); else never called."""
        k = self.keys
        arrivals = [
            *(k.join(run_id, j) for j in spec.joins),
            *(k.map(run_id, m) for m in spec.maps),
        ]
        if spec.after:  # what follows the end of the run (lib/run.lua)
            extra = {
                **extra,
                "after": json.dumps({**spec.after, "lease": self.settings.queued_lease}),
            }
        args: list[Any] = [
            spec.graph_id,
            inputs_json,
            len(spec.order),  # the graph's nodes (handlers and compensations apart)
            json.dumps(list(spec.sinks)),
            "" if deadline is None else repr(float(deadline)),
            self.settings.run_ttl,
            self.settings.queued_lease,
            json.dumps(extra),
            "1" if waits else "",
        ]
        for root in spec.roots:
            args += [root, spec.nodes[root].delay]
        created, detail = self._run("start", run_id, args, arrivals, also, meanwhile)
        return bool(created), _text(detail)

    def admit(self, run_id: str, spec: GraphSpec) -> tuple[bool, str]:
        """Start a queued run that took a slot of its concurrency limit (its roots marked
        and leased; the caller publishes them); (True, server time) when this call started
        it, else (False, its status, "" when there is no run)."""
        args: list[Any] = [self.settings.queued_lease]
        for root in spec.roots:
            args += [root, spec.nodes[root].delay]
        started, detail = self._run("admit", run_id, args)
        return bool(started), _text(detail)

    def refuse(
        self, run_id: str, graph_id: str, inputs_json: str, error_json: str, extra: dict[str, str]
    ) -> tuple[bool, str]:
        """Record a run that could not start as failed; (True, server time) when recorded,
        (False, status) when a run with this id exists already."""
        args = [graph_id, inputs_json, error_json, self.settings.result_ttl, json.dumps(extra)]
        recorded, detail = self._run("refuse", run_id, args)
        return bool(recorded), _text(detail)

    def begin(
        self,
        run_id: str,
        field: str,
        hostname: str,
        upstream_ids: list[str],
        expands: bool = False,
        handover: int = 0,
        *,
        trace: str | None = None,
        links: Sequence[str] = (),
    ) -> Begun:
        """Record the start of ``field`` (a node id, or "<node>#<i>" for a map item) and
        read the results of ``upstream_ids`` (a long list in parts, after the script).
        ``handover``: the attempt that sent this message (a retry), which may hand the
        node over to it while it holds it.

        A watched node (a tracer or an error reporter is active: ``trace`` is not None)
        also keeps ``trace``, this attempt's trace context, unless it is "", and reads in
        the same call the run's flow name and the trace contexts kept by ``links``."""
        watch = ["", ""] if trace is None else [trace, len(links), *links]
        reply = self._run(
            "begin",
            run_id,
            [
                field,
                hostname,
                self.settings.running_lease,
                self.settings.run_ttl,
                "map" if expands else "",
                handover or "",
                *watch,
                *upstream_ids[:PART],
            ],
        )
        if trace is None:
            return self._begun(reply, run_id, upstream_ids)
        *reply, shown = reply
        kept = {p: _text(c) for p, c in zip(links, shown[1:]) if c}
        begun = self._begun(reply, run_id, upstream_ids)
        return begun._replace(flow=_text(shown[0]) if shown[0] else None, links=kept)

    def _begun(self, reply: list[Any], run_id: str, upstream_ids: list[str]) -> Begun:
        status = _text(reply[0]) if reply and reply[0] is not None else None
        if status == Begin.BUSY:
            lease = _text(reply[3]) if reply[3] else ""
            return Begun(
                Begin.BUSY,
                None,
                None,
                [],
                int(reply[2] or 0),
                _text(reply[1]),
                float(lease) if lease else None,
            )
        if status == Begin.UNRELEASED:
            return Begun(Begin.UNRELEASED, None, None, [], behind=_text(reply[1] or ""))
        if status != Begin.RUNNING:
            return Begun(_begin_status(status), None, None, [])
        if reply[2]:
            return Begun(Begin.RUNNING, reply[1], reply[2], [])
        asked = min(len(upstream_ids), PART)
        upstream = [r or None for r in reply[4 : 4 + asked]]
        waited = _text(reply[4 + asked]) if len(reply) > 4 + asked else ""
        if len(upstream_ids) > PART:
            upstream += self.results_of(run_id, upstream_ids[PART:])
        return Begun(
            Begin.RUNNING,
            reply[1],
            None,
            upstream,
            int(reply[3]),
            waited=max(0.0, float(waited)) if waited else None,
        )

    def results_of(self, run_id: str, fields: list[str]) -> list[bytes | None]:
        """Stored results of ``fields``, read in parts (results never change once stored)."""
        key = self.keys.results(run_id)
        out: list[bytes | None] = []
        for i in range(0, len(fields), PART * 2):
            part = fields[i : i + PART * 2]
            with translating("reading results"):
                out += self._client.hmget(key, part)
        return out

    def complete(
        self,
        spec: GraphSpec,
        run_id: str,
        node: NodeSpec,
        result_json: bytes | str,
        *,
        kind: str = "ok",
        branch: str = "",
        error_json: str = "",
        traceback: str = "",
        also: Piggyback | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> Arrival:
        """Store the result and arrive at the successors (see complete.lua), in parts of
        PART successors. ``kind`` is "ok", "failed" (a member of a group with a failure
        policy, with ``error_json``) or "skipped"; ``branch`` is "!a,b" when the node chose
        those successors only; ``also``: sent in the first call's round trip.
        ``meanwhile``: called while the call's answer is on its way, when the arrival is
        one call on a client of one server; else never called."""
        k = self.keys
        policy = ""
        if kind == "failed" and node.tolerant is not None:
            policy = json.dumps(spec.policies[node.tolerant])
        succs = list(node.succs)
        parts = [succs[i : i + PART] for i in range(0, len(succs), PART)] or [[]]
        stored, ended = Stored.KEPT, Ended.NO
        publish: list[str] = []
        skipped: list[str] = []
        record: dict[str, str] | None = None
        for n, part in enumerate(parts):
            joins: list[str] = []
            args: list[Any] = [
                node.id,
                result_json,
                len(spec.sinks) if not node.succs else 0,
                self.settings.run_ttl,
                self.settings.result_ttl,
                len(part),
                self.settings.queued_lease,
                error_json,
                branch,
                kind,
                policy,
                node.tolerant or "",
                traceback,
                "1" if n == 0 else "",
                "1" if n == len(parts) - 1 else "",
                "1" if len(succs) >= 2 else "",
            ]
            for succ in part:
                target = spec.nodes[succ]
                args += [succ, len(target.preds), target.delay]
                if target.is_join:
                    joins.append(k.join(run_id, succ))
            overlap = meanwhile if len(parts) == 1 else None
            reply = self._run("complete", run_id, args, joins, also, overlap)
            if not isinstance(reply, list) or len(reply) < 3:
                raise BarrierError(f"complete.lua answered {reply!r}")
            n_pub = int(reply[2])
            ids = [_text(s) for s in reply[3:]]
            if "#record" in ids:  # this call ended the run: the record follows
                at = ids.index("#record")
                ids, fields = ids[:at], ids[at + 1 :]
                record = dict(zip(fields[::2], fields[1::2], strict=True))
            this = Stored(int(reply[0]))
            if n == 0:
                stored = this
            ended = ended or Ended(int(reply[1]))
            publish += ids[:n_pub]
            skipped += ids[n_pub:]
            if this in (Stored.NOT_RUNNING, Stored.IGNORED) or ended == Ended.FAILED:
                break  # no more parts
        return Arrival(stored, ended, publish, skipped, record)

    def complete_begin(
        self,
        run_id: str,
        node_id: str,
        result_json: bytes | str,
        successor: str,
        hostname: str,
        upstream_ids: list[str],
        also: Piggyback | None = None,
    ) -> Begun | None:
        """Node ``node_id`` succeeded with ``result_json`` and its one successor begins
        at once on ``hostname`` (an eager successor: complete_begin.lua), reading the
        results of ``upstream_ids``; what begin.lua would answer the successor, or None
        when nothing was written and the general path (``complete``, then ``begin``)
        must be taken. ``also`` goes in the same round trip, whatever the script answers."""
        if len(upstream_ids) > PART:
            return None
        reply = self._run(
            "complete_begin",
            run_id,
            [
                node_id,
                result_json,
                self.settings.run_ttl,
                successor,
                hostname,
                self.settings.running_lease,
                *upstream_ids,
            ],
            also=also,
        )
        if _text(reply[0]) != Fused.BEGUN:
            return None
        inputs, attempt, flow = reply[1], int(reply[2]), reply[3]
        return Begun(
            Begin.RUNNING,
            inputs,
            None,
            [r or None for r in reply[4:]],
            attempt,
            flow=_text(flow) if flow else None,
            waited=0.0,
        )

    def keep_trace(self, run_id: str, field: str, trace: str) -> bool:
        """Keep ``trace``, the trace context of ``field``'s running attempt, when it began
        without begin.lua (see trace.lua); False when the run or the attempt ended."""
        return bool(self._run("trace", run_id, [field, trace]))

    def finish(
        self,
        run_id: str,
        status: str,
        node_id: str = "",
        error_json: str = "",
        *,
        guard: str = "",
        unsent: bool = False,
    ) -> Finish:
        """End a running run as failed or cancelled: ENDED if this call ended it, ALREADY
        if it had ended, IGNORED if ``guard`` (a result field) holds a result: the failure
        is a failing copy of a message that succeeded."""
        args = [status, node_id, error_json, self.settings.result_ttl, guard, "1" if unsent else ""]
        return Finish(int(self._run("finish", run_id, args)))

    def after(self, run_id: str, step: str, how: StepEnd, payload: str) -> tuple[After, str]:
        """Step ``step`` (a handler, a compensation) ended ``how``, with ``payload`` (its
        result, or its error record): (NEXT, the next step to publish), (CLOSED, "") when
        the run ended, (STALE, "") for a step that is not the current one."""
        reply = self._run(
            "after", run_id, [step, StepEnd(how).value, payload, self.settings.result_ttl]
        )
        return After(_text(reply[0])), _text(reply[1]) if len(reply) > 1 else ""

    def wait(self, run_id: str, node: NodeSpec) -> tuple[Wait, bytes | None]:
        """A worker reached wait_for() node ``node``: (SIGNALLED, the payload) when the
        run was signalled, else (WAITING or ENDED, None)."""
        timeout = "" if node.wait_timeout is None else repr(node.wait_timeout)
        reply = self._run("wait", run_id, [node.id, timeout])
        return Wait(_text(reply[0])), reply[1] if len(reply) > 1 else None

    def signal(self, run_id: str, node_id: str, payload_json: str) -> tuple[Signal, str]:
        """Signal wait_for() node ``node_id`` with ``payload_json``: (a Signal, the run's
        status when ENDED, else "")."""
        reply = self._run("signal", run_id, [node_id, payload_json, self.settings.queued_lease])
        return Signal(_text(reply[0])), _text(reply[1]) if len(reply) > 1 else ""

    def mark_child(self, run_id: str, node_id: str, child_id: str) -> ChildMark:
        """Node ``node_id`` started child run ``child_id`` (see child.lua)."""
        return ChildMark(_text(self._run("child", run_id, [node_id, child_id])))

    def revoke(self, run_id: str, field: str, node_id: str, epoch: int, error_json: str) -> Revoked:
        """Cancel a running run because the message of ``field`` (of epoch ``epoch``) was
        revoked through Celery, with ``error_json`` naming the node; see revoke.lua."""
        args = [field, node_id, epoch, error_json, self.settings.result_ttl]
        return Revoked(_text(self._run("revoke", run_id, args)))

    def resume(
        self, run_id: str, fields: list[str], watch: list[str] | None = None
    ) -> tuple[int, list[str]]:
        """Reopen a failed or cancelled run and lease ``fields`` (nodes and map items) to
        be sent again, and those of ``watch`` (left running) that ended meanwhile; returns
        the run's new epoch (the task ids of the messages sent from now on end in
        ``~<epoch>``) and the latter fields, for the caller to send as well."""
        try:
            late = self._run(
                "resume",
                run_id,
                [
                    self.settings.run_ttl,
                    self.settings.queued_lease,
                    len(fields),
                    *fields,
                    *(watch or []),
                ],
            )
        except redis_errors().ResponseError as exc:
            raise RunNotResumable(f"run {run_id} cannot be resumed: {exc}") from exc
        return int(late[0]), [_text(f) for f in late[1:]]

    def park(self, run_id: str) -> None:
        """Leave a failed or cancelled run queued for a slot of its flow's concurrency
        limit, to be resumed when it holds one (see park.lua)."""
        try:
            self._run("park", run_id, [self.settings.run_ttl])
        except redis_errors().ResponseError as exc:
            raise RunNotResumable(f"run {run_id} cannot be resumed: {exc}") from exc

    # -- maps ----------------------------------------------------------------------------

    def expand(self, run_id: str, node: NodeSpec, count: int) -> bool:
        """Lease the units (items or chunks) of map node ``node`` with ``count`` items, in
        parts; False if it was expanded already."""
        units = node.units(count)
        sep = "@" if node.map_chunk else "#"
        for start in range(0, units, PART * 4):
            if not self._run(
                "expand",
                run_id,
                [
                    node.id,
                    count,
                    self.settings.queued_lease,
                    self.settings.run_ttl,
                    start,
                    min(start + PART * 4, units),
                    units,
                    sep,
                ],
            ):
                return False
        return True

    def map_arrive(
        self, run_id: str, node: NodeSpec, unit: int, units: int, result_json: bytes | str
    ) -> tuple[Stored, int, int]:
        """Unit ``unit`` of map node ``node`` arrived (an item with its result, or a chunk
        with ""); (stored, units arrived, items of the map)."""
        reply = self._run(
            "map_arrive",
            run_id,
            [
                node.unit_field(unit),
                result_json,
                unit,
                self.settings.run_ttl,
                units,
                self.settings.result_ttl,
                node.id,
                self.settings.running_lease,
            ],
            [self.keys.map(run_id, node.id)],
        )
        return Stored(int(reply[0])), int(reply[1]), int(reply[2])

    def store_items(self, run_id: str, node_id: str, items: list[tuple[int, str]]) -> int:
        """Store the results of items of a chunked map, ``[(index, result JSON), ...]``;
        the number stored now, or Stored.NOT_RUNNING when the run is no longer running."""
        args: list[Any] = [self.settings.run_ttl]
        for index, result_json in items:
            args += [f"{node_id}#{index}", result_json]
        return int(self._run("item", run_id, args))

    def map_count(self, run_id: str, node_id: str) -> int:
        """How many items map node ``node_id`` expanded into (0 before it expanded)."""
        with translating("reading a map's size"):
            raw = self._client.hget(self.keys.nodes(run_id), f"{node_id}:items")
        return int(raw or 0)

    def map_results(self, run_id: str, node_id: str, count: int) -> bytes:
        """The JSON list of the items' results, in item order."""
        raws = self.results_of(run_id, [f"{node_id}#{i}" for i in range(count)])
        missing = [i for i, r in enumerate(raws) if r is None]
        if missing:
            raise BarrierError(f"map node {node_id!r}: results of items {missing[:5]} missing")
        return b"[" + b",".join(r for r in raws if r is not None) + b"]"

    def node_states(self, run_id: str, node_ids: list[str]) -> dict[str, str | None]:
        key = self.keys.nodes(run_id)
        out: dict[str, str | None] = {}
        for i in range(0, len(node_ids), PART * 2):
            part = node_ids[i : i + PART * 2]
            with translating("reading node states"):
                raw = self._client.hmget(key, [f"{n}:state" for n in part])
            out.update({n: v.decode() if v else None for n, v in zip(part, raw)})
        return out

    # -- leases and the reconciler ------------------------------------------------------

    def lease(
        self,
        run_id: str,
        mode: Mode,
        seconds: float,
        fields: list[str],
        attempt: int = 0,
        worker: str = "",
    ) -> int:
        """Set leases of ``fields`` ``seconds`` from now (see lease.lua for the modes;
        ``attempt`` for REQUEUE, ``worker`` for RELEASE)."""
        if not fields:
            return 0
        who = worker if mode == Mode.RELEASE else attempt or ""
        return int(self._run("lease", run_id, [Mode(mode).value, seconds, who, *fields]))

    def attempt(
        self,
        run_id: str,
        field: str,
        outcome: str,
        error_json: str = "",
        traceback: str = "",
        number: int | None = None,
    ) -> bool:
        """Keep attempt ``number`` (default: the latest) at ``field`` in its history as
        ended with ``outcome`` (failed, retried, lost); False when there was nothing to keep
        or it is kept already."""
        args = [field, outcome, error_json, traceback, "" if not number else str(number)]
        return bool(self._run("attempt", run_id, args))

    def reclaim(self, run_id: str, limit: int = 1000, hold: float | None = None) -> Reclaim:
        """The reconciler's look at a run (see reclaim.lua); ``hold``: server time until
        which running leases that ran out are extended instead of reclaimed."""
        args = [self.settings.max_lost, limit, "" if hold is None else repr(hold)]
        reply = self._run("reclaim", run_id, args)
        verdict = Verdict(_text(reply[0]))
        if verdict == Verdict.ENDED:
            return Reclaim(verdict, pending_continuation=bool(int(reply[1])))
        if verdict == Verdict.POISON:
            return Reclaim(verdict, poison=(_text(reply[1]), int(reply[2]), _text(reply[3])))
        if verdict == Verdict.QUEUED:
            deadline = _text(reply[1])
            return Reclaim(verdict, deadline=float(deadline) if deadline else None)
        if verdict != Verdict.OK:
            return Reclaim(verdict)
        count = int(reply[5])
        found = [
            (
                _text(reply[6 + 3 * i]),
                Expiry(_text(reply[7 + 3 * i])),
                float(_text(reply[8 + 3 * i]) or 0),
            )
            for i in range(count)
        ]
        running, queued = _text(reply[2]), _text(reply[3])
        return Reclaim(
            verdict,
            now=float(_text(reply[1])),
            next_running=float(running) if running else None,
            next_queued=float(queued) if queued else None,
            expired=tuple(found),
            held=int(reply[4]),
        )

    def continuation(self, run_id: str, mode: str, hold: float = 60.0) -> Continuation:
        """Claim ("claim") or finish ("done") the continuation of the canvas a run sits in."""
        if mode not in ("claim", "done"):
            raise ValueError(f"continuation mode {mode!r}: use 'claim' or 'done'")
        return Continuation(_text(self._run("continue", run_id, [mode, hold])))


def _begin_status(status: str | None) -> str | None:
    """begin.lua's first answer when the node is not called: a Begin, or the status of a
    run that is not running (None when the run is gone)."""
    try:
        return Begin(status)
    except ValueError:
        return status
