"""Running one node message on a worker, in named steps.

    NodeRun(task, fn, message, bound).run():
      begin      begin.lua: is the run still running? is the result already stored?
                 record the attempt, read the run inputs and the upstream results
      call       gather the arguments, call the function (unless its result is stored)
      store      encode the result; an item of a map arrives at its map node first
      complete   complete.lua: store once, arrive at the successors' barriers, claim the
                 successors this arrival releases, end the run at its last sink
      release    publish the claimed successors, then mark them published (mark.lua)

A failure after the task's retries goes through :func:`fail_node`: the run fails, unless
the node is a member of a group whose policy tolerates it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.exceptions import Retry
from celery.utils.log import get_task_logger

from ..codec import decode_value, encode_value, error_record, exception_record
from ..context import RunContext
from ..dispatch import publish_items, publish_nodes
from ..errors import (
    DeadlineExceeded,
    ResultTooLarge,
    StoreError,
    UnknownTask,
)
from ..lifecycle import after_run, end_run
from ..model import GraphSpec, NodeSpec, policy_violation
from ..protocol import Branch, NodeMessage
from ..state import State, state_for

logger = get_task_logger("celery_graph")


class NodeRun:
    """One delivery of one node message."""

    def __init__(
        self, task: Task, fn: Callable[..., Any], message: NodeMessage, bound: dict[str, Any]
    ) -> None:
        self.task = task
        self.app = task.app
        self.fn = fn
        self.message = message
        self.bound = bound
        self.state: State = state_for(task.app)
        self.spec: GraphSpec = self.state.graphs.load(message.graph_id)
        self.node: NodeSpec = self.spec.nodes[message.node_id]
        # an item of a map reads what the node reads, not the map's source list
        self.upstream = self.node.upstream_ids() if message.index is None else self.node.pull_ids()
        self.hostname = task.request.hostname or socket.gethostname()

    @property
    def what(self) -> str:
        index = self.message.index
        return f"node {self.node.id!r}" + ("" if index is None else f" item {index}")

    def run(self) -> Any:
        m = self.message
        status, inputs_raw, own, upstream = self.state.scripts.begin(
            m.run_id, self.node, self.hostname, m.result_field, self.upstream
        )
        if status == "deadline":
            raise DeadlineExceeded(
                f"run {m.run_id} passed its deadline before node {m.node_id!r} started"
            )
        if status != "running":
            logger.info("celery-graph: run %s is %s; node %s not run", m.run_id, status, m.node_id)
            return None
        if self.node.map_source and m.index is None and own is None:
            return self.expand_map(dict(zip(self.upstream, upstream)))
        choice = ""
        if own is not None:
            # Redelivered after the result was stored: never call the function again, but
            # finish the dispatch a crash may have interrupted (a branch choice is stored too).
            result_json: bytes | str = own
            result = decode_value(own)
        else:
            result, choice = self.call(inputs_raw, upstream)
            result_json = self.encode(result)
        if m.index is not None:
            _stored, arrived = self.state.scripts.map_arrive(
                m.run_id, m.node_id, m.index, result_json
            )
            if arrived < (m.count or 0):
                return result
            # every item is in: this arrival completes the map node (idempotent)
            result_json = self.state.scripts.map_results(m.run_id, m.node_id, m.count or 0)
        self.complete(result_json, choice)
        return result

    # -- steps ---------------------------------------------------------------------------

    def call(self, inputs_raw: bytes | None, upstream: list[bytes | None]) -> tuple[Any, str]:
        """Call the node's function; (its result, the branch choice or "")."""
        missing = [i for i, raw in zip(self.upstream, upstream) if raw is None]
        states = self.state.scripts.node_states(self.message.run_id, missing) if missing else {}
        kwargs = gather_kwargs(self.node, inputs_raw, self.bound, upstream, self.upstream, states)
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
        except Exception as exc:
            if node.retries and not isinstance(exc, Retry) and task.request.retries < node.retries:
                raise task.retry(exc=exc, countdown=node.retry_delay,
                                 max_retries=node.retries) from exc
            raise
        if isinstance(result, Branch):
            return result.value, branch_choice(node, result)
        return result, ""

    def encode(self, result: Any) -> str:
        result_json = encode_value(result, lambda: f"{self.what}: result")
        limit = self.state.settings.max_result_bytes
        if len(result_json) > limit:
            raise ResultTooLarge(
                f"{self.what}: result is {len(result_json)} bytes encoded, over "
                f"graph_max_result_bytes={limit}; store large data elsewhere and return a "
                "reference"
            )
        return result_json

    def complete(self, result_json: bytes | str, choice: str = "") -> None:
        """Store the result, arrive at the successors, release what is ready."""
        run_id, scripts = self.message.run_id, self.state.scripts
        arrival = scripts.complete(self.spec, run_id, self.node, result_json, branch=choice)
        finished = arrival.finished
        deferred = list(arrival.deferred)
        claimed = list(arrival.publish)
        # Pass skips on: a skipped node arrives as a skip at its own successors, which may in
        # turn be skipped, or released when another branch reached them for real.
        to_skip = list(arrival.skipped)
        while to_skip:
            skipped = self.spec.nodes[to_skip.pop()]
            more = scripts.complete(self.spec, run_id, skipped, "", kind="skipped")
            finished = finished or more.finished
            claimed += more.publish
            deferred += more.deferred
            to_skip += more.skipped
        release(self.app, self.state, self.spec, run_id, claimed)
        if finished:
            after_run(self.app, self.state, run_id)
        if deferred:
            # Another arrival released these successors moments ago and is publishing them.
            # Come back after the grace period: by then they are marked published (nothing to
            # do), or the releaser died and this message takes the publish over.
            logger.info("celery-graph: node %s of run %s defers %s", self.node.id, run_id,
                        deferred)
            raise self.task.retry(countdown=self.state.settings.release_grace, max_retries=None)

    def expand_map(self, upstream: dict[str, bytes | None]) -> int:
        """The map node became ready: publish one message per item of the source's list
        (an empty list completes the node with [] at once). Returns the item count."""
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
        publish_items(self.app, node, self.message, items)
        return len(items)


def release(app: Any, state: State, spec: GraphSpec, run_id: str, node_ids: list[str]) -> None:
    """Publish successors this process claimed, then mark them published."""
    if node_ids:
        publish_nodes(app, spec, run_id, node_ids)
        state.scripts.mark_published(run_id, node_ids)


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
        if raw is None and states.get(nid) in ("skipped", "failed"):
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


# -- failure ------------------------------------------------------------------------------


def fail_node(app: Any, message: NodeMessage, exc: BaseException, traceback: str) -> bool:
    """A node failed after its retries: fail the run, unless the node is a member of a group
    whose policy tolerates it; then it arrives at its successors as failed. True if this
    ended the run."""
    state = state_for(app)
    run_id, node_id = message.run_id, message.node_id
    error = exception_record(node_id, exc, traceback)
    try:
        spec = state.graphs.load(message.graph_id)
    except StoreError:
        return end_run(app, state, run_id, "failed", node_id=node_id, error=error)
    node = spec.nodes[node_id]
    if node.tolerant is None or isinstance(exc, DeadlineExceeded):
        return end_run(app, state, run_id, "failed", spec=spec, node_id=node_id, error=error)
    arrival = state.scripts.complete(spec, run_id, node, "", error_json=error, kind="failed")
    policy = spec.policies[node.tolerant]
    states = state.scripts.node_states(run_id, policy["members"])
    failed = {m for m, s in states.items() if s == "failed"}
    why = policy_violation(policy, failed)
    if why is not None:
        message_text = (
            f"group {node.tolerant!r} ({policy['kind']} policy): {why}; failed: "
            + ", ".join(sorted(failed))
        )
        group_error = error_record(
            node_id, "GroupPolicyFailed", "celery_graph.errors", message_text,
            f"last failure, in node {node_id!r}:\n{traceback or repr(exc)}",
        )
        return end_run(app, state, run_id, "failed", spec=spec, node_id=node_id,
                       error=group_error)
    release(app, state, spec, run_id, list(arrival.publish))
    return False
