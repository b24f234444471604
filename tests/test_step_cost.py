"""What one sequential step costs the graph Redis, counted (not timed): a real `celery
worker` subprocess runs flows of 1 and 21 steps with its graph state on a Redis of its
own (the broker is another one), and MONITOR there lists every command of the run: the
ones a client sent (round trips: they name the run's keys) and the ones the scripts they
ran made (as INFO commandstats counts them, TIME included). The difference between the
two runs is 20 steps' worth, whatever the submission, the end of the run and the workers'
own timers (heartbeats, sweeps, metrics) cost.

Each path is counted on its own, exactly: a worker that runs every successor eagerly (its
depth above the flow's length) and one that publishes every node
(``CELERY_GRAPH_EAGER_SUCCESSORS=0``). A change of either count fails here, so a change
meant to lower one (issue 22: a fused complete-and-begin for an eager successor) updates
its figure, and one that is not meant to move it shows that it did.

Targets (issue 22): at most 3 round trips and 12 commands a step. Reached: on the eager
path 1 round trip and 9 commands (complete_begin.lua: the node's end and its successor's
start in one call; 19 in 2 before it, 32 before that); on the published path 2 round
trips and 19 commands (begin.lua, complete.lua). docs/performance.md says where they go."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest

from celery_graph import Sequence
from celery_graph.testing import PrivateRedis
from tests.support.monitor import Monitor, command
from tests.support.processes import Workers
from tests.tasks import step

# (round trips, commands) of one sequential step, by path; issue 22 asks for 12 commands
STEP_COST = {"eager": (1, 9), "published": (2, 19)}
STEPS = 21  # the eager worker runs the 20 after the first in one chain (its depth: 64)


@pytest.fixture(scope="module")
def graph_redis() -> Iterator[str]:
    server = PrivateRedis().start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture(scope="module", params=sorted(STEP_COST))
def workers(
    request: pytest.FixtureRequest, redis_url: str, graph_redis: str
) -> Iterator[tuple[str, Workers]]:
    """(path, a worker that takes it)."""
    w = Workers(redis_url, concurrency=2, pool="prefork", graph_url=graph_redis)
    # the reconciler sweeps once as the worker starts, and not again during the count (a
    # sweep that looks at the measured run would add its commands to it)
    w.extra_env["CELERY_GRAPH_RECONCILE_INTERVAL"] = "3600"
    if request.param == "eager":
        w.extra_env["CELERY_GRAPH_EAGER_DEPTH"] = "64"
    else:
        w.extra_env["CELERY_GRAPH_EAGER_SUCCESSORS"] = "0"
    try:
        w.start(f"cost-{request.param}")
        yield request.param, w
    finally:
        w.stop()


def cost(workers: Workers, graph_redis: str, steps: int) -> tuple[int, int, Counter[str], int]:
    """(round trips, commands, commands by name, node messages sent to the broker) that
    name the run of a ``steps``-step flow, from submission to its result."""
    flow = Sequence(tuple(step.bind(id=f"s{i}") for i in range(steps)))
    flow.compile()
    flow.submit(app=workers.app).get(timeout=60)  # the graph stored, connections up
    with Monitor(graph_redis) as mon, Monitor(workers.redis_url) as broker:
        run = flow.submit(app=workers.app)
        run.get(timeout=60)
        # the worker's own end of the run (its listing, the canvas continuation) goes on
        # after the waiter wakes: counted once nothing more names the run for a second
        seen, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < 1.0:
            now = sum(1 for line in mon.lines if run.id in line)
            if now != seen:
                seen, quiet_since = now, time.monotonic()
            time.sleep(0.05)
    # a script's own commands follow the EVALSHA that ran it (a script runs alone), and
    # some name no key (TIME): each is counted with the command that ran it
    tagged: list[str] = []
    ours = False
    for line in mon.lines:
        if not line.startswith("lua"):
            ours = f"{{{run.id}}}" in line
        if ours:
            tagged.append(line)
    by_name = Counter(command(line) for line in tagged)
    trips = sum(1 for line in tagged if not line.startswith("lua"))
    # a node's message names its task id ("<run>:<node>") as it is pushed onto its queue
    sent = sum(1 for line in broker.lines if command(line) == "lpush" and run.id in line)
    return trips, len(tagged), by_name, sent


def test_a_sequential_step_costs_what_its_path_costs(workers, graph_redis):
    path, w = workers
    t1, c1, n1, _ = cost(w, graph_redis, 1)
    tn, cn, nn, sent = cost(w, graph_redis, STEPS)
    # the path counted is the one named: every node published, or the first one only
    assert sent == (1 if path == "eager" else STEPS), sent
    trips, commands = (tn - t1) / (STEPS - 1), (cn - c1) / (STEPS - 1)
    by_name = {k: (nn[k] - n1[k]) / (STEPS - 1) for k in nn}
    print(f"{path} step: {trips} round trips, {commands} commands: {by_name}")
    # eager: complete_begin.lua; published: begin.lua and complete.lua
    assert (trips, commands) == STEP_COST[path], by_name
