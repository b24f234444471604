"""Every Redis key celery-graph uses, built in one place from the key prefix.

Layout (``P`` is the prefix, ``R`` a run id, ``N`` a node id)::

    P:graph:<sha256>          string  zlib-compressed canonical GraphSpec (shared by runs)
    P:runs                    zset    run id -> start time, for listings (trimmed)
    P:runs:flow:<flow>        zset    run id -> start time, the runs of one flow
    P:runs:state:<state>      zset    run id -> start time, runs that ended so (succeeded,
                                      failed, cancelled); dropped when a run resumes
    P:flows                   zset    flow name -> last submission
    P:flowstats:<F>:<D>       hash    flow F's runs that ended on UTC day D, per hour:
                                      "<h>|<outcome>" counts, "<h>|b|<le>" durations
    P:runs:indexed            string  server time since which the three above are written
    P:running                 zset    run id -> when the reconciler looks at it next
    P:reconciler              string  lock: one reconciler sweeps at a time
    P:reconciler:clock        hash    swept: server time of the last sweep; hold: until
                                      then running leases are extended, not reclaimed
    P:worker:{W}              hash    registry entry of worker W (Celery hostname)
    P:worker:{W}:metrics      hash    task counters and histograms of worker W
    P:workers                 zset    hostname -> last heartbeat (server time)
    P:metrics:runs            hash    run counters and run-duration histogram
    P:metrics:exporter        string  the worker that serves the deployment-wide metrics
    P:run:{R}                 hash    run record: status, graph, inputs, error, times
    P:run:{R}:results         hash    node id -> JSON result
    P:run:{R}:nodes           hash    "<N>:state", "<N>:run" (attempts|started|finished|
                                      worker), "<N>:queued", "<N>:trace" (its span's
                                      traceparent, when traced), "<N>:sent" (when its
                                      latest attempt was sent), "<N>:history:<a>" (an
                                      ended attempt, JSON), ... -> per-node state;
                                      "#<state>" -> how many graph nodes are in it
                                      (lib/counts.lua)
    P:run:{R}:sinks           set     sinks that have finished
    P:run:{R}:done            list    completion signal waiters block on
    P:run:{R}:state           hash    shared state of the run (RunContext)
    P:run:{R}:leases          zset    running node (or "<N>#<i>" item) -> lease expiry
    P:run:{R}:queued          zset    published node or item, not started -> lease expiry
    P:run:{R}:map:N           set     item indexes of dynamic fan-out N that finished
    P:run:{R}:join:N          hash    barrier arrivals of join N: predecessor -> 1 real, 0 skip
    P:limits                  set     scopes of concurrency limits, for the reconciler
    P:limit:{S}:info          hash    limit -> the limit; "v:<V>" -> JSON of key value V's
                                      input value, while V holds or queues runs
    P:limit:{S}:seq           string  submission counter (FIFO order of waiting runs)
    P:limit:{S}:<V>:held      zset    run id holding a slot -> lease expiry (server time)
    P:limit:{S}:<V>:queue     zset    run id waiting for a slot -> submission number
    P:tasklimits              set     tasks with graph_concurrency / graph_rate_limit
    P:tasklimit:{T}:held      zset    "<run>:<field>" running task T -> slot lease expiry
    P:tasklimit:{T}:waiting   zset    "<run>:<field>" waiting for a slot -> when it came
    P:tasklimit:{T}:messages  hash    "<run>:<field>" -> the message that wakes it (JSON)
    P:tasklimit:{T}:rate      string  the earliest time task T may start next (server time)
    P:schedules               zset    schedule name -> its last fire (server time)
    P:schedule:{N}            hash    schedule N (``schedule()``): its flow, policy, last fire,
                                      last run, next fire, skips, paused
    P:schedule:{N}:lock       string  lock: one fire of schedule N decided at a time

A concurrency limit (``flow.with_concurrency``) has a scope ``S`` (the flow's name, or
its graph id) and a slot group ``V`` per distinct value of its key (``all`` without a
key); its keys share the ``{S}`` hash tag (:class:`LimitKeys`, ``L`` in Lua).

A run started with an idempotency key has the key's digest as its run id, so the key and
its run are one record and expire together.

All keys of one run carry the ``{R}`` hash tag, so a Lua script touching several of
them stays in one Redis Cluster slot. Every run script takes the eight keys every run has
in one order, :class:`RunKeys` (``KEYS[1..8]``, named once in Lua as ``K`` by
``state/lua/lib/run.lua``), and its own keys (a join's, a map's) after them; the worker
scripts take :class:`WorkerKeys` the same way (``W``), the counting script one hash of
counters, :class:`CounterKeys` (``C``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import NamedTuple

from .errors import ConfigurationError

DEFAULT_PREFIX = "celery_graph"

# A prefix is one or more colon-separated words; braces would break hash tags.
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.\-]+(:[A-Za-z0-9_.\-]+)*$")
# Node ids end up inside key names, so they may not hold braces, colons or spaces.
NODE_ID_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")
FINAL_STATES = ("succeeded", "failed", "cancelled")
# a flow name is used as it is inside a key when it is made of these characters
_PLAIN_FLOW = re.compile(r"^[A-Za-z0-9_.:\-]{1,200}$")


def flow_key_part(flow: str) -> str:
    """The part of an index key that names a flow: the name itself when it is plain, else
    a digest (braces or spaces in a key would break hash tags and listings)."""
    if _PLAIN_FLOW.match(flow):
        return flow
    return "sha256." + hashlib.sha256(flow.encode()).hexdigest()[:24]


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a valid key prefix, else raise ConfigurationError."""
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
        raise ConfigurationError(
            f"malformed key prefix {prefix!r}: use words of letters, digits, '_', '.', '-' "
            "joined by single colons, e.g. 'myapp:workflows' (no braces, spaces or "
            "leading/trailing colon)"
        )
    return prefix


class RunKeys(NamedTuple):
    """The keys every run has, in the one order every run script takes them as
    ``KEYS[1..8]`` (lua/lib/run.lua reads them once, as ``K.run``, ``K.results``, ...)."""

    run: str
    results: str
    nodes: str
    sinks: str
    done: str
    state: str
    leases: str
    queued: str


# The Redis type of each of them (the scripts' headers say the same; a test checks).
RUN_KEY_TYPES = {
    "run": "hash",
    "results": "hash",
    "nodes": "hash",
    "sinks": "set",
    "done": "list",
    "state": "hash",
    "leases": "zset",
    "queued": "zset",
}


class WorkerKeys(NamedTuple):
    """A worker's two keys, in the order the worker scripts take them (``W`` in Lua)."""

    entry: str
    metrics: str


WORKER_KEY_TYPES = {"entry": "hash", "metrics": "hash"}


class CounterKeys(NamedTuple):
    """One hash of counters, as the counting script takes it (``C`` in Lua): a worker's
    task counters (``worker_metrics``) or the run counters (``run_metrics``)."""

    counters: str


COUNTER_KEY_TYPES = {"counters": "hash"}


class LimitKeys(NamedTuple):
    """One slot group of a concurrency limit, in the order the limit scripts take them
    (``L`` in Lua): the scope's info and counter, the group's holders and waiters."""

    info: str
    seq: str
    held: str
    queue: str


LIMIT_KEY_TYPES = {"info": "hash", "seq": "string", "held": "zset", "queue": "zset"}


def limit_slot(value: object) -> str:
    """The slot group of a key value (``all`` for a limit without a key): a digest of its
    JSON, so any input value makes a valid key name."""
    if value is None:
        return "all"
    data = json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)
    return "v." + hashlib.sha256(data.encode()).hexdigest()[:20]


class TaskLimitKeys(NamedTuple):
    """The keys of one task's fleet-wide limits (``@task(graph_concurrency=N,
    graph_rate_limit=...)``), in the order the task limit scripts take them (``T``)."""

    held: str
    waiting: str
    messages: str
    rate: str


TASK_LIMIT_KEY_TYPES = {"held": "zset", "waiting": "zset", "messages": "hash", "rate": "string"}


class Keys:
    """Key names under one prefix."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = check_prefix(prefix)

    def graph(self, graph_id: str) -> str:
        return f"{self.prefix}:graph:{graph_id}"

    def runs_index(self) -> str:
        return f"{self.prefix}:runs"

    def flow_runs(self, flow: str) -> str:
        return f"{self.prefix}:runs:flow:{flow_key_part(flow)}"

    def flow_stats(self, flow: str, day: int) -> str:
        """One flow's ended runs of one UTC day (days since the epoch): counts by outcome and
        a duration histogram, per hour (fields ``<hour>|<outcome>``, ``<hour>|b|<le>``)."""
        return f"{self.prefix}:flowstats:{flow_key_part(flow)}:{day}"

    def state_runs(self, state: str) -> str:
        if state not in FINAL_STATES:
            raise ValueError(f"runs are indexed by final state only, not {state!r}")
        return f"{self.prefix}:runs:state:{state}"

    def flows_index(self) -> str:
        return f"{self.prefix}:flows"

    def index_marker(self) -> str:
        return f"{self.prefix}:runs:indexed"

    def run(self, run_id: str) -> str:
        return f"{self.prefix}:run:{{{run_id}}}"

    def results(self, run_id: str) -> str:
        return f"{self.run(run_id)}:results"

    def nodes(self, run_id: str) -> str:
        return f"{self.run(run_id)}:nodes"

    def sinks(self, run_id: str) -> str:
        return f"{self.run(run_id)}:sinks"

    def done(self, run_id: str) -> str:
        return f"{self.run(run_id)}:done"

    def map(self, run_id: str, node_id: str) -> str:
        return f"{self.run(run_id)}:map:{node_id}"

    def state(self, run_id: str) -> str:
        return f"{self.run(run_id)}:state"

    def join(self, run_id: str, node_id: str) -> str:
        return f"{self.run(run_id)}:join:{node_id}"

    def leases(self, run_id: str) -> str:
        return f"{self.run(run_id)}:leases"

    def queued(self, run_id: str) -> str:
        return f"{self.run(run_id)}:queued"

    def running_index(self) -> str:
        return f"{self.prefix}:running"

    def reconciler_lock(self) -> str:
        return f"{self.prefix}:reconciler"

    def reconciler_clock(self) -> str:
        """When the last sweep was, and the hold after an outage (see engine/reconcile)."""
        return f"{self.prefix}:reconciler:clock"

    def run_layout(self, run_id: str) -> RunKeys:
        """The run's keys in the order every run script takes them."""
        return RunKeys(
            run=self.run(run_id),
            results=self.results(run_id),
            nodes=self.nodes(run_id),
            sinks=self.sinks(run_id),
            done=self.done(run_id),
            state=self.state(run_id),
            leases=self.leases(run_id),
            queued=self.queued(run_id),
        )

    def run_keys(self, run_id: str, joins: Iterable[str], maps: Iterable[str] = ()) -> list[str]:
        """Every key a run may create: its layout, then its joins' and maps' arrivals."""
        return [
            *self.run_layout(run_id),
            *(self.join(run_id, j) for j in joins),
            *(self.map(run_id, m) for m in maps),
        ]

    # A worker's two keys share the ``{hostname}`` hash tag (one Cluster slot, so one
    # script or transaction may touch both); the index is updated on its own.
    def worker(self, hostname: str) -> str:
        return f"{self.prefix}:worker:{{{hostname}}}"

    def workers_index(self) -> str:
        return f"{self.prefix}:workers"

    def worker_metrics(self, hostname: str) -> str:
        return f"{self.prefix}:worker:{{{hostname}}}:metrics"

    def worker_layout(self, hostname: str) -> WorkerKeys:
        """A worker's keys in the order the worker scripts take them."""
        return WorkerKeys(self.worker(hostname), self.worker_metrics(hostname))

    def limits_index(self) -> str:
        """The scopes of concurrency limits that hold or queue runs (the reconciler's)."""
        return f"{self.prefix}:limits"

    def limit_scope(self, scope: str) -> str:
        return f"{self.prefix}:limit:{{{flow_key_part(scope)}}}"

    def limit_layout(self, scope: str, slot: str) -> LimitKeys:
        """The keys of slot group ``slot`` (:func:`limit_slot`) of limit ``scope``."""
        base = self.limit_scope(scope)
        return LimitKeys(
            f"{base}:info", f"{base}:seq", f"{base}:{slot}:held", f"{base}:{slot}:queue"
        )

    def task_limits_index(self) -> str:
        return f"{self.prefix}:tasklimits"

    def task_limit_layout(self, task: str) -> TaskLimitKeys:
        """The keys of task ``task``'s limits, in the order the scripts take them."""
        base = f"{self.prefix}:tasklimit:{{{flow_key_part(task)}}}"
        return TaskLimitKeys(f"{base}:held", f"{base}:waiting", f"{base}:messages", f"{base}:rate")

    def schedules_index(self) -> str:
        return f"{self.prefix}:schedules"

    def schedule(self, name: str) -> str:
        return f"{self.prefix}:schedule:{{{flow_key_part(name)}}}"

    def schedule_lock(self, name: str) -> str:
        return f"{self.schedule(name)}:lock"

    def run_metrics(self) -> str:
        """Run-level counters and the run-duration histogram, for every worker to serve."""
        return f"{self.prefix}:metrics:runs"

    def metrics_exporter(self) -> str:
        """The hostname of the one worker that serves the deployment-wide metrics (a lease)."""
        return f"{self.prefix}:metrics:exporter"


def key_pattern(prefix: str) -> re.Pattern[str]:
    """The pattern every key under ``prefix`` matches (tests check each key against it)."""
    p = re.escape(prefix)
    node = r"[A-Za-z_][A-Za-z0-9_.\-]*"
    return re.compile(
        rf"^{p}:(graph:[0-9a-f]{{64}}|runs|running|reconciler(:clock)?|workers|flows|runs:indexed"
        rf"|runs:flow:[A-Za-z0-9_.:\-]+|runs:state:(succeeded|failed|cancelled)"
        rf"|flowstats:[A-Za-z0-9_.:\-]+:\d+"
        rf"|worker:\{{[^\s:{{}}]+\}}(:metrics)?|metrics:(runs|exporter)|limits|schedules"
        rf"|schedule:\{{[A-Za-z0-9_.:\-]+\}}(:lock)?|tasklimits"
        rf"|tasklimit:\{{[A-Za-z0-9_.:\-]+\}}:(held|waiting|messages|rate)"
        rf"|limit:\{{[A-Za-z0-9_.:\-]+\}}:(info|seq|(all|v\.[0-9a-f]{{20}}):(held|queue))"
        rf"|run:\{{[0-9a-f]{{32}}\}}"
        rf"(:(results|nodes|sinks|done|state|leases|queued|join:{node}|map:{node}))?)$"
    )
