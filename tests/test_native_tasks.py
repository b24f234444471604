"""Existing Celery tasks as nodes (``node(task)``) run under their own task name, on their
own route, with their own rate and time limits, on a stock ``celery worker`` (prefork);
their code is untouched and still works called plainly; a node of one survives its worker
being killed (leases and the reconciler), with its result stored once."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis

from celery_graph import GraphRun, RunFailed, node
from tests.native_app import configure, limited, routed_queue, routed_sum, seen_key, slow_plain, who
from tests.support.helpers import starts_processes, wait_for
from tests.support.processes import Workers
from tests.tasks import step


class NativeWorkers(Workers):
    """`celery -A tests.native_app worker` subprocesses consuming the default queue and
    the existing task's routed queue."""

    def __init__(self, redis_url: str, **kwargs) -> None:
        super().__init__(redis_url, **kwargs)
        configure(self.app, self.queue)
        self.app.conf.cgtest_trace_url = redis_url
        self.extra_env["CGTEST_NATIVE"] = "1"

    def app_ref(self) -> str:
        return "tests.native_app:app"

    def queues(self) -> list[str]:
        return [self.queue, routed_queue(self.queue)]

    def seen(self, client: redis.Redis) -> list[dict]:
        return [json.loads(e) for e in client.lrange(seen_key(self.prefix), 0, -1)]

    def cleanup(self) -> None:
        self.stop()
        with self.app.connection_for_write() as conn:
            for q in (self.queue, routed_queue(self.queue)):
                conn.default_channel.queue_purge(q)


@pytest.fixture(scope="module")
@starts_processes
def prefork(redis_url: str) -> Iterator[NativeWorkers]:
    workers = NativeWorkers(redis_url, concurrency=2, pool="prefork")
    try:
        workers.start("native")
        yield workers
    finally:
        workers.cleanup()


@pytest.fixture()
def native(prefork: NativeWorkers) -> NativeWorkers:
    prefork.app.set_current()
    return prefork


def test_existing_tasks_run_under_their_own_names_and_routes(native, rclient):
    flow = node(routed_sum) >> node(who)
    run = flow.submit({"a": 2, "b": 3}, app=native.app)
    assert run.get(timeout=30) == {"task": "tests.native.who", "id": f"{run.id}:who", "got": 5}
    seen = {e["id"]: e for e in native.seen(rclient) if e["id"].startswith(run.id)}
    assert seen[f"{run.id}:routed_sum"]["name"] == "tests.native.routed_sum"
    assert seen[f"{run.id}:routed_sum"]["queue"] == routed_queue(native.queue)  # task_routes
    assert seen[f"{run.id}:who"]["name"] == "tests.native.who"
    assert seen[f"{run.id}:who"]["queue"] == native.queue
    assert not [e for e in native.seen(rclient) if e["name"] == "celery_graph.call"]


def test_the_messages_name_the_existing_task(native, published):
    flow = node(routed_sum).bind(a=1) >> node(who)
    flow.submit(app=native.app).get(timeout=30)
    names = {m["task"] for m in published}
    assert "tests.native.routed_sum" in names
    assert "celery_graph.call" not in names


def test_existing_task_rate_limit_applies_in_a_graph(native, rclient):
    members = [node(routed_sum, id=f"r{i}", a=i) for i in range(4)]
    run = (members[0] | members[1] | members[2] | members[3]).submit(app=native.app)
    assert run.get(timeout=30) == {f"r{i}": i for i in range(4)}
    starts = sorted(e["at"] for e in native.seen(rclient) if e["id"].startswith(run.id))
    assert len(starts) == 4
    # "2/s": one every half second after the first one or two (Celery 5.3's bucket lets
    # two start at once); with no limit all four start within ~0.1 s
    assert starts[-1] - starts[0] >= 0.9, starts


def test_existing_task_time_limit_applies_in_a_graph(native):
    started = time.monotonic()
    run = (node(limited, seconds=6.0) >> step).submit(app=native.app)
    with pytest.raises(RunFailed) as info:
        GraphRun(run.id, app=native.app).get(timeout=30)
    assert info.value.node_id == "limited"
    assert info.value.exc_type == "TimeLimitExceeded"
    assert time.monotonic() - started < 6
    assert run.status().nodes["step"].state == "upstream_failed"  # it will never run


def test_existing_tasks_still_work_when_called_plainly(native, rclient):
    result = routed_sum.delay(4, b=5)
    assert result.get(timeout=30) == 9
    entry = next(e for e in native.seen(rclient) if e["id"] == result.id)
    assert entry["queue"] == routed_queue(native.queue)
    bound = who.apply_async((7,))
    assert bound.get(timeout=30) == {"task": "tests.native.who", "id": bound.id, "got": 7}


@pytest.mark.slow
def test_existing_task_node_killed_with_its_worker_runs_again_and_completes_once(
    redis_url, rclient, tag
):
    workers = NativeWorkers(redis_url, concurrency=2)  # threads: a kill takes the run with it
    try:
        workers.app.set_current()
        workers.start("a")
        workers.start("b")
        # long enough that the kill lands mid-body on a loaded machine (2 s did not)
        flow = node(slow_plain, tag=tag, seconds=6.0) >> step.bind(name="after", tag=tag)
        run = flow.submit({"tag": tag}, app=workers.app)
        # running in graph state and inside its body: a kill between the two (the node
        # recorded as started, the body not yet begun) would leave one start in the trace
        status = wait_for(
            lambda: (
                (s := run.status()).nodes["slow_plain"].state == "running"
                and b"start:slow_plain" in rclient.lrange(f"cgtest-trace:{tag}", 0, -1)
                and s
            ),
            timeout=20,
            what="the existing task's body to start",
        )
        victim = status.nodes["slow_plain"].worker
        workers.kill(victim)
        before = [e.decode() for e in rclient.lrange(f"cgtest-trace:{tag}", 0, -1)]
        assert "end:slow_plain" not in before, "the kill came after the body ended"
        assert run.get(timeout=60) == "after"
        trace = [e.decode() for e in rclient.lrange(f"cgtest-trace:{tag}", 0, -1)]
        assert trace.count("start:slow_plain") == 2, trace  # at-least-once execution...
        assert trace.count("end:slow_plain") == 1, trace
        assert trace.count("start:after") == 1, trace  # ...its successor once
        final = run.status()
        assert final.nodes["slow_plain"].attempts == 2
        assert final.nodes["slow_plain"].worker != victim
        assert run.results()["slow_plain"] == "slow_plain"
    finally:
        workers.cleanup()
