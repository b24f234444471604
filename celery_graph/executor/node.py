"""Running one node message on a worker, in named steps.

    NodeRun(task, fn, message, bound).run():
      begin      begin.lua: is the run still running? is the result already stored?
                 record the attempt with a running lease, read the run inputs and the
                 upstream results (and, for a tracer or error reporter, keep this
                 delivery's trace context and read the flow name: observe.py); an
                 eager successor begun with its predecessor's end takes that answer
      call       gather the arguments, call the function (unless its result is stored),
                 its lease renewed meanwhile (leases.py)
      encode     the result as JSON, within graph_max_result_bytes
      complete   an item of a map arrives at its map node first (map_arrive.lua); then
                 complete.lua: store once, arrive at the successors' barriers, mark and
                 lease the successors this arrival releases, end the run at its last sink;
                 or, when its one successor is kept for this process, complete_begin.lua:
                 complete the node and begin that successor in one call (eager.py)
      settle     publish the released successors, pass skips on, end-of-run hooks
                 (lifecycle.settle); a successor released alone may be kept to run
                 next in this process instead (eager.py)

A failure after the task's retries goes through :func:`fail_node`: the run fails, unless
the node is a member of a group whose policy tolerates it (decided in complete.lua).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.exceptions import Reject, Retry
from celery.utils.log import get_task_logger

from ..codec import decode_value, encode_value
from ..dispatch import publish_items, publish_nodes
from ..engine.context import RunContext
from ..engine.lifecycle import end_run, node_failed, settle, start_child, step_ended
from ..engine.results import backend_of, store_success, success_writes
from ..errors import (
    DeadlineExceeded,
    GraphNotFound,
    ResultTooLarge,
    StoreError,
    StoreUnavailable,
    UnknownTask,
)
from ..model import Child, GraphSpec, NodeSpec
from ..protocol import GRAPH_KWARG, Branch, NodeMessage
from ..state import Begin, Begun, State, StepEnd, Stored, Wait, state_for
from ..state.scripts import Piggyback
from .eager import Keeper
from .leases import keeper
from .observe import watch

# a chunk stores its items' results at least this often (and at its end, and before a
# failing item's error): one Redis call per 50 ms of work, not one per item
CHUNK_FLUSH_SECONDS = 0.05

logger = get_task_logger("celery_graph.task")

# seconds between the begin.lua calls of a message sent ahead of its release or its run's
# creation (NodeMessage.ahead) that finds neither yet (0.4 s in all): the call that makes
# them was in Redis's hands before the message was sent
UNRELEASED_PAUSES = (0.005, 0.02, 0.1, 0.3)


class NodeRun:
    """One delivery of one node message."""

    def __init__(
        self,
        task: Task,
        fn: Callable[..., Any],
        message: NodeMessage,
        bound: dict[str, Any],
        keep: Keeper | None = None,
        begun: Begun | None = None,
    ) -> None:
        # first: a tracer or error reporter shows the run and node of a spec that fails
        # to load too
        self.watch = watch(task, message)
        self.task = task
        self.app = task.app
        self.fn = fn
        self.message = message
        self.bound = bound
        self.state: State = state_for(task.app)
        self.spec: GraphSpec = self._load(message)
        self.node: NodeSpec = self.spec.nodes[message.node_id]
        # an item of a map reads what the node reads, not the map's source list
        self.upstream = self.node.upstream_ids() if message.index is None else self.node.pull_ids()
        self.hostname = task.request.hostname or socket.gethostname()
        self.began: str | None = None  # what begin.lua answered (Begin.RUNNING: it ran)
        # which released successor, alone, this process runs next instead of publishing
        # it (eager.py); the one kept, recorded and leased like a published one
        self.keep = keep
        self.kept: NodeMessage | None = None
        # what complete_begin.lua answered: the kept successor began already (eager.py)
        self.kept_begun: Begun | None = None
        # this node began as its predecessor completed: that call's answer, not begin.lua's
        self.ahead = begun

    def _load(self, message: NodeMessage) -> GraphSpec:
        """The message's graph. A root sent ahead of its run's creation (the graph is
        stored in the same call) asks again shortly; one that still finds none is dropped,
        not failed: a run created since has it marked sent, and the reconciler sends it
        again once its queued lease runs out."""
        graphs = self.state.graphs
        for pause in UNRELEASED_PAUSES if message.ahead else ():
            try:
                return graphs.load(message.graph_id)
            except GraphNotFound:
                time.sleep(pause)
        try:
            return graphs.load(message.graph_id)
        except GraphNotFound as exc:
            if not message.ahead:
                raise
            logger.warning(
                "celery-graph: %s was sent ahead of its run, whose graph is not stored yet: "
                "dropped (the reconciler sends it again if the run exists)",
                message.task_id,
            )
            raise Reject(str(exc), requeue=False) from None

    def run(self) -> Any:
        m = self.message
        expands = bool(self.node.map_source) and m.index is None
        watched = self.watch
        if self.ahead is not None:
            begun = self.ahead
        else:
            begun = self.begin(expands)
            # a message sent while its release (or its run's creation) was on its way to
            # Redis, and faster than it: asked again shortly, never run before it
            for pause in UNRELEASED_PAUSES if m.ahead else ():
                if begun.status not in (Begin.UNRELEASED, None):
                    break
                time.sleep(pause)
                begun = self.begin(expands)
        self.began = begun.status
        if watched is not None:
            watched.begun(begun.flow, begun.links)
        if begun.status == Begin.DEADLINE:
            raise DeadlineExceeded(
                f"run {m.run_id} passed its deadline before node {m.node_id!r} started"
            )
        if begun.status == Begin.BUSY:
            # a copy (the broker's, past its visibility timeout; the reconciler's; one
            # handed back): the holder runs it, or its lease runs out and the reconciler
            # sends the node again. Acknowledged, and nothing counted.
            logger.info(
                "celery-graph: %s of run %s is running (attempt %d on %s); this copy of "
                "its message is acknowledged without running",
                m.result_field,
                m.run_id,
                begun.attempt,
                begun.worker or "unknown",
            )
            return None
        if begun.status == Begin.UNRELEASED:
            logger.warning(
                "celery-graph: %s of run %s is not released in the graph state (%s); this "
                "message is acknowledged without running, and the node is sent when the "
                "state releases it (the graph Redis lost the write that released it?)",
                m.result_field,
                m.run_id,
                f"upstream node {begun.behind!r} has not finished"
                if begun.behind
                else "nothing has released it",
            )
            return None
        if begun.status != Begin.RUNNING:
            logger.info(
                "celery-graph: run %s is %s; node %s not run",
                m.run_id,
                begun.status,
                m.result_field,
            )
            return None
        if begun.own is None:
            self.claim(begun.attempt)
            self.task.request.graph_waited = begun.waited  # the queue-wait metric
        if self.ahead is not None and watched is not None:
            # begun before anything knew this delivery's trace context: kept now (a
            # successor begun ahead is never a join, so it links to nothing)
            trace = watched.trace(m)
            if trace:
                self.state.scripts.keep_trace(m.run_id, m.result_field, trace)
        if expands and begun.own is None:
            return self.expand_map(dict(zip(self.upstream, begun.upstream)))
        if self.node.waits and begun.own is None:
            return self.wait()
        choice = ""
        if begun.own is not None:
            # Redelivered after the result was stored: never call the function again, but
            # pass on what the arrival passes on (skips are passed on idempotently).
            result_json: bytes | str = begun.own
            result = decode_value(begun.own)
        else:
            kwargs = self.arguments(begun.inputs, begun.upstream)
            with keeper.hold(self.state, m.run_id, m.result_field):
                if m.chunk:
                    result, result_json = self.call_chunk(kwargs), ""
                else:
                    result, choice = self.call(kwargs)
                    if isinstance(result, Child):
                        return self.start_child(result)
                    result_json = self.encode(result, m.index)
        if m.index is not None:
            _stored, arrived, items = self.state.scripts.map_arrive(
                m.run_id, self.node, m.index, m.count or 0, result_json
            )
            if arrived < (m.count or 0):
                return result
            # every unit is in: this arrival completes the map node (idempotent)
            result_json = self.state.scripts.map_results(m.run_id, m.node_id, items)
        self.complete(result_json, choice, ahead=m.index is None and begun.own is None)
        return result

    # -- steps ---------------------------------------------------------------------------

    def begin(self, expands: bool) -> Begun:
        m, watched = self.message, self.watch
        return self.state.scripts.begin(
            m.run_id,
            m.result_field,
            self.hostname,
            self.upstream,
            expands,
            m.holder,
            trace=None if watched is None else watched.trace(m),
            links=() if watched is None else watched.links(self.node, m),
        )

    def claim(self, attempt: int) -> None:
        """This delivery holds the node as ``attempt``: a retry it asks for leases the node
        only while it is the latest attempt (``_node_retried``), and whatever Celery sends
        again from this request (a retry: ours, the task's own ``self.retry()``,
        ``autoretry_for``) may take the node over from it (begin.lua's handover)."""
        request = self.task.request
        request.graph_attempt = attempt
        kwargs = dict(request.kwargs or {})
        kwargs[GRAPH_KWARG] = self.message.held_by(attempt).fields()
        request.kwargs = kwargs

    def arguments(self, inputs_raw: bytes | None, upstream: list[bytes | None]) -> dict[str, Any]:
        """The keyword arguments of the call (for a chunk: its items under the map's
        parameter)."""
        missing = [i for i, raw in zip(self.upstream, upstream) if raw is None]
        states = self.state.scripts.node_states(self.message.run_id, missing) if missing else {}
        kwargs = gather_kwargs(self.node, inputs_raw, self.bound, upstream, self.upstream, states)
        if self.node.inject:  # a handler: how the run ended
            kwargs[self.node.inject] = run_end(self.state, self.message.run_id, self.node)
        return kwargs

    def call_chunk(self, kwargs: dict[str, Any]) -> list[Any]:
        """Call the function once per item of this chunk that has no stored result, and
        store the results as they are computed: a few at a time (at most
        ``CHUNK_FLUSH_SECONDS`` apart, and before a failing item's error goes up); the
        chunk's results, in order."""
        m, node = self.message, self.node
        assert node.map_param is not None and m.index is not None
        items = kwargs[node.map_param]
        first = m.index * m.chunk
        stored = self.state.scripts.results_of(
            m.run_id, [f"{node.id}#{first + i}" for i in range(len(items))]
        )
        results: list[Any] = []
        pending: list[tuple[int, str]] = []
        last = time.monotonic()

        def flush() -> bool:
            nonlocal last
            running = (
                not pending
                or self.state.scripts.store_items(m.run_id, node.id, pending) != Stored.NOT_RUNNING
            )
            pending.clear()
            last = time.monotonic()
            return running

        for i, item in enumerate(items):
            done = stored[i]
            if done is not None:  # by an earlier delivery of this chunk
                results.append(decode_value(done))
                continue
            try:
                # the items before it stay done for the retry or a resume: stored before
                # the retry is sent, so the retried chunk finds them
                result, _choice = self.call({**kwargs, node.map_param: item}, before_retry=flush)
            except BaseException:
                flush()
                raise
            pending.append((first + i, self.encode(result, first + i)))
            results.append(result)
            if time.monotonic() - last >= CHUNK_FLUSH_SECONDS and not flush():
                return results  # the run ended meanwhile
        flush()
        return results

    def call(
        self, kwargs: dict[str, Any], before_retry: Callable[[], Any] | None = None
    ) -> tuple[Any, str]:
        """Call the node's function; (its result, the branch choice or ""). A failure
        the node retries runs ``before_retry`` first: the retry is sent at once."""
        fn = self.fn
        if self.node.call:
            fn = self.app.tasks.get(self.node.call)
            if fn is None:
                raise UnknownTask(
                    f"node {self.node.id!r}: existing task {self.node.call!r} is not registered "
                    f"on the worker on {self.hostname}; import its module in every worker"
                )
        task, node = self.task, self.node
        try:
            if node.context:
                result = fn(RunContext(self.state, self.message.run_id, node.id), **kwargs)
            else:
                result = fn(**kwargs)
        except StoreUnavailable:
            raise  # Redis went away under the function (its RunContext): not its failure
        except Exception as exc:
            if node.retries and not isinstance(exc, Retry) and task.request.retries < node.retries:
                if before_retry is not None:
                    before_retry()
                raise task.retry(
                    exc=exc, countdown=node.retry_delay, max_retries=node.retries
                ) from exc
            raise
        if isinstance(result, Branch):
            return result.value, branch_choice(node, result)
        return result, ""

    def encode(self, result: Any, item: int | None = None) -> str:
        what = f"node {self.node.id!r}" + ("" if item is None else f" item {item}")
        result_json = encode_value(result, lambda: f"{what}: result")
        limit = self.state.settings.max_result_bytes
        if len(result_json) > limit:
            raise ResultTooLarge(
                f"{what}: result is {len(result_json)} bytes encoded, over "
                f"graph_max_result_bytes={limit}; store large data elsewhere and return a "
                "reference"
            )
        return result_json

    def complete(self, result_json: bytes | str, choice: str = "", *, ahead: bool = False) -> None:
        """Store the result (in the result backend too: results.py), arrive at the
        successors, publish what is released. ``ahead``: a node's own first result, whose
        one successor may begin in the same call (:meth:`complete_ahead`)."""
        run_id = self.message.run_id
        writes = None
        if backend_of(self.app) is not None:
            value, request = decode_value(result_json), self.task.request
            if not self.node.after:  # in the completing call's round trip, if it can
                writes = success_writes(self.app, self.message, value, request, self.state)
            if writes is None:
                store_success(self.app, self.message, value, request)
        if self.node.after:  # a handler or a compensation: the next step follows
            payload = result_json.decode() if isinstance(result_json, bytes) else result_json
            step_ended(
                self.app,
                self.state,
                self.spec,
                run_id,
                self.node.id,
                StepEnd.OK,
                payload,
                self.message.epoch,
            )
            return
        if ahead and not choice and self.complete_ahead(result_json, writes):
            return
        sent: list[str] = []
        meanwhile = self.send_ahead(sent) if ahead and not choice else None
        arrival = self.state.scripts.complete(
            self.spec,
            run_id,
            self.node,
            result_json,
            branch=choice,
            also=writes,
            meanwhile=meanwhile,
        )
        if sent and sent[0] in arrival.publish:  # released as expected: sent already
            arrival = arrival._replace(publish=[n for n in arrival.publish if n != sent[0]])
        epoch = self.message.epoch
        kept = settle(self.app, self.state, self.spec, run_id, arrival, epoch, keep=self.keep)
        if kept is not None:
            self.kept = NodeMessage(
                self.spec.graph_id, run_id, kept, self.spec.nodes[kept].call, epoch=epoch
            )

    def send_ahead(self, sent: list[str]) -> Callable[[], None] | None:
        """When the node's one successor has no other predecessor (it is released by this
        completion, unless the run ended or the node was taken over meanwhile) and will be
        published, not kept: what sends its message while complete.lua's answer is on its
        way, appending its id to ``sent`` once the broker took it. The message can reach a
        worker before the release only if Redis is slower than the broker's whole trip;
        its begin.lua then answers "unreleased" and the worker asks again shortly
        (:meth:`run`). One that was not to be released finds the run ended, or the node
        done or running, and runs nothing. A message the broker refuses is sent after
        the answer, as any release (and fails as it would)."""
        node = self.node
        if len(node.succs) != 1:
            return None
        succ = self.spec.nodes[node.succs[0]]
        if len(succ.preds) != 1 or succ.delay or succ.map_source or succ.waits:
            return None
        if self.keep is not None and self.keep(succ):
            return None  # runs next in this process (eager.py)
        app, spec, m = self.app, self.spec, self.message

        def send() -> None:
            try:
                publish_nodes(app, spec, m.run_id, [succ.id], epoch=m.epoch, ahead=True)
            except Exception as exc:  # settle() publishes it after the answer
                logger.info("celery-graph: %s of run %s not sent ahead: %s", succ.id, m.run_id, exc)
                return
            sent.append(succ.id)

        return send

    def complete_ahead(self, result_json: bytes | str, writes: Piggyback | None = None) -> bool:
        """Complete the node and begin its one successor in one call (complete_begin.lua)
        when that successor will run next in this process (eager.py); False, with nothing
        written but ``writes`` (sent in that call, whatever it answers), when it will not or
        the state asks for the general path."""
        keep, node, m = self.keep, self.node, self.message
        if keep is None or len(node.succs) != 1:
            return False
        succ = self.spec.nodes[node.succs[0]]
        message = NodeMessage(self.spec.graph_id, m.run_id, succ.id, succ.call, epoch=m.epoch)
        if len(succ.preds) != 1 or not keep.ahead(succ, message.task_id):
            return False
        begun = self.state.scripts.complete_begin(
            m.run_id, node.id, result_json, succ.id, self.hostname, succ.upstream_ids(), writes
        )
        if begun is None:
            return False
        self.kept, self.kept_begun = message, begun
        return True

    def start_child(self, child: Child) -> str:
        """The node returned child(flow): start the child run; the node waits for it
        with no worker (lifecycle.start_child). Returns the child run's id."""
        m = self.message
        if m.chunk:
            raise TypeError(
                f"node {m.node_id!r}: a chunked map (map(..., chunk=N)) cannot return "
                "child(); map without chunk to start one child run per item"
            )
        child_id = start_child(self.app, self.state, m.run_id, m.result_field, child)
        logger.info(
            "celery-graph: %s of run %s started child run %s", m.node_id, m.run_id, child_id
        )
        return child_id

    def wait(self) -> Any:
        """A wait_for() node: complete it with the signal's payload when the run was
        signalled, else leave it waiting (no worker holds it; signal.lua releases it
        again when the signal comes)."""
        outcome, payload = self.state.scripts.wait(self.message.run_id, self.node)
        if outcome != Wait.SIGNALLED or payload is None:
            return None
        self.complete(payload)
        return decode_value(payload)

    def expand_map(self, upstream: dict[str, bytes | None]) -> int:
        """The map node became ready: lease, then publish, one message per item of the
        source's list (an empty list completes the node with [] at once). Returns the
        item count."""
        node = self.node
        assert node.map_source is not None
        raw = upstream.get(node.map_source)
        items = decode_value(raw) if raw is not None else None
        if not isinstance(items, list):
            raise TypeError(
                f"node {node.id!r}: map({node.map_source!r}) needs a list, but "
                f"{node.map_source!r} returned {type(items).__name__}"
            )
        if not items:
            self.complete("[]")
            return 0
        if self.state.scripts.expand(self.message.run_id, node, len(items)):
            publish_items(self.app, node, self.message, items)
        return len(items)


def branch_choice(node: NodeSpec, chosen: Branch) -> str:
    unknown = [t for t in chosen.targets if t not in node.succs]
    if unknown:
        raise ValueError(
            f"node {node.id!r} chose {unknown} with branch(), which are not its successors "
            f"(successors: {', '.join(node.succs) or 'none'})"
        )
    return chosen.choice()


def gather_kwargs(
    node: NodeSpec,
    inputs_raw: bytes | None,
    bound: dict[str, Any],
    upstream: list[bytes | None],
    ids: list[str],
    states: dict[str, str | None],
) -> dict[str, Any]:
    """Defaults < run inputs < bound kwargs < upstream results."""
    kwargs: dict[str, Any] = {}
    if inputs_raw and node.params:
        inputs = decode_value(inputs_raw)
        for p in node.params:
            if p in inputs:
                kwargs[p] = inputs[p]
    kwargs.update(bound)
    if not (node.pull or node.groups):
        return kwargs
    results: dict[str, bytes] = {}
    for nid, raw in zip(ids, upstream):
        if raw is None and states.get(nid) in ("skipped", "skipping", "failed"):
            raw = b"null"  # skipped by a branch, or failed under its group's policy
        if raw is None:
            raise StoreError(
                f"node {node.id!r}: the result of upstream node {nid!r} is missing "
                "(expired or deleted run state)"
            )
        results[nid] = raw
    decoded: dict[str, Any] = {}

    def value(nid: str) -> Any:
        if nid not in decoded:
            decoded[nid] = decode_value(results[nid])
        return decoded[nid]

    def tree(t: Any) -> Any:
        return value(t) if isinstance(t, str) else [tree(x) for x in t]

    for p, src in node.pull.items():
        kwargs[p] = value(src)
    for p, t in node.groups.items():
        kwargs[p] = tree(t)
    return kwargs


def run_end(state: State, run_id: str, node: NodeSpec) -> dict[str, Any]:
    """What a handler receives: ``failure`` ({"run_id", "node", "exc_type",
    "exc_message"}) or ``outcome`` ({"run_id", "state"})."""
    record = state.runs.record(run_id)
    if node.after == "exit":
        return {"run_id": run_id, "state": record.get("outcome", record.get("status"))}
    error = json.loads(record.get("error") or "{}")
    return {
        "run_id": run_id,
        "node": error.get("node") or None,
        "exc_type": error.get("type", ""),
        "exc_message": error.get("message", ""),
    }


# -- failure ------------------------------------------------------------------------------


def fail_node(
    app: Any, message: NodeMessage, error: str, traceback: str = "", attempt: int | None = None
) -> bool:
    """A node failed after its retries (``error``: its error record): fail the run, unless
    the node is a member of a group whose policy tolerates it; then it arrives at its
    successors as failed, and complete.lua decides the policy. A failing copy of a message
    whose result is stored changes nothing. True if this ended the run. Raises
    StoreUnavailable when Redis cannot be reached (the caller sends the failure again)."""
    state = state_for(app)
    run_id, node_id = message.run_id, message.node_id
    guard = message.result_field
    state.scripts.attempt(run_id, guard, "failed", error, traceback, attempt)
    try:
        spec = state.graphs.load(message.graph_id)
    except StoreUnavailable:
        raise
    except StoreError:
        return end_run(app, state, run_id, "failed", node_id=node_id, error=error, guard=guard)
    node = spec.nodes[node_id]
    if node.after:  # a handler or a compensation failed: recorded, the next one runs
        step_ended(app, state, spec, run_id, node_id, StepEnd.FAILED, error, message.epoch)
        return False
    deadline = json.loads(error).get("type") == DeadlineExceeded.__name__
    if deadline or message.index is not None:
        return end_run(app, state, run_id, "failed", node_id=node_id, error=error, guard=guard)
    return node_failed(app, state, spec, run_id, node, error, traceback, message.epoch)
