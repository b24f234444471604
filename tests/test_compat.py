"""What differs between the supported Celery, kombu and redis-py releases, and what
celery-graph does about it (celery_graph/compat.py, docs/compatibility.md). Each test runs on
the oldest and on the newest combination (.ci/pythons)."""

from __future__ import annotations

import time

import pytest
from redis import exceptions as rexc

from celery_graph import ConfigurationError, StoreUnavailable, compat, task
from celery_graph.state.connection import translating
from tests.support.helpers import wait_for
from tests.tasks import trace_client

# -- the threads pool takes the next message as soon as a slot frees ----------------------


@task
def held(started: str, gate: str) -> str:
    """Runs until a token arrives on ``gate`` (registered before the session's worker)."""
    client = trace_client()
    client.rpush(started, "1")
    client.blpop([gate], timeout=30)
    return "held"


@task
def next_in_line() -> str:
    return "next"


def test_a_freed_thread_slot_takes_the_next_message_at_once(app, rclient, tag):
    """The session's worker runs the threads pool (4 slots, prefetch 4). With every slot
    busy, kombu's Redis transport stops asking for messages; pool threads that finish do
    not wake the worker's event loop, so before kombu 5.7 the next message waited for
    kombu's 10 s restore timer (a 1,000-item map took 23 to 67 s on Celery 5.3 instead of
    3 s). The bootstep wakes the loop every 0.1 s."""
    started, gate = f"cgtest-held:{tag}", f"cgtest-gate:{tag}"
    holding = [held.delay(started, gate) for _ in range(4)]
    try:
        wait_for(lambda: rclient.llen(started) == 4, 20, "four held tasks in the four slots")
        waiting = next_in_line.delay()  # in the broker: the prefetch window is full
        rclient.rpush(gate, *["go"] * 4)
        freed = time.monotonic()
        assert waiting.get(timeout=30) == "next"
        assert time.monotonic() - freed < 3
    finally:
        rclient.rpush(gate, *["go"] * 4)
        for result in holding:
            result.get(timeout=30)
        rclient.delete(started, gate)


# -- options and settings an older Celery lacks --------------------------------------------


def test_settings_an_older_celery_ignores_are_named_in_one_line_each(monkeypatch):
    conf = {"worker_soft_shutdown_timeout": 30.0, "task_retry_on_worker_lost": True}
    monkeypatch.setattr(compat, "CELERY_VERSION", (5, 3, 0))
    assert compat.ignored_settings(conf) == [
        "worker_soft_shutdown_timeout needs Celery 5.5 or newer (Celery 5.3.0 is installed): "
        "ignored; a cold shutdown (after --graceful-timeout) hands running nodes back at once",
        "task_retry_on_worker_lost needs Celery 5.7 or newer (Celery 5.3.0 is installed): "
        "ignored; graph tasks still reject and requeue a message whose pool process died "
        "(task_reject_on_worker_lost)",
    ]
    monkeypatch.setattr(compat, "CELERY_VERSION", (5, 5, 3))
    assert [line.split()[0] for line in compat.ignored_settings(conf)] == [
        "task_retry_on_worker_lost"
    ]
    monkeypatch.setattr(compat, "CELERY_VERSION", (5, 7, 0))
    assert compat.ignored_settings(conf) == []
    assert compat.ignored_settings({"worker_soft_shutdown_timeout": 0.0}) == []  # its default


def test_task_options_of_a_newer_celery_are_refused_naming_the_release(monkeypatch):
    monkeypatch.setattr(compat, "CELERY_VERSION", (5, 4, 0))
    compat.check_task_options("@task(f)", {"pydantic": False, "queue": "q"})  # not asked for
    with pytest.raises(ConfigurationError, match=r"^@task\(f\): pydantic_strict=True needs "):
        compat.check_task_options("@task(f)", {"pydantic_strict": True})
    monkeypatch.setattr(compat, "CELERY_VERSION", (5, 5, 0))
    compat.check_task_options("@task(f)", {"pydantic": True, "pydantic_strict": True})


def test_versions_read_as_numbers():
    assert compat.version_tuple("5.3.0") == (5, 3, 0)
    assert compat.version_tuple("7.2.4-v2") == (7, 2, 4)
    assert compat.version_tuple("5.5.0rc1") == (5, 5, 0)
    assert compat.CELERY_VERSION >= compat.OLDEST_CELERY


# -- redis-py 4.x and 5.x --------------------------------------------------------------------


def test_a_moved_reply_reads_as_a_cluster_node_on_every_redis_py():
    """redis-py 6 raises MovedError for a plain client's MOVED; 4.x and 5.x (the releases
    Celery 5.3 and 5.4 allow) a ResponseError, prefixed by the command inside a pipeline.
    tests/test_scale.py meets the real reply from a real cluster node."""
    replies = [
        rexc.ResponseError("MOVED 6061 127.0.0.1:7001"),
        rexc.ResponseError(
            "Command # 1 (SET p:graph:ab x EX 604800 NX) of pipeline caused error: "
            "MOVED 6061 127.0.0.1:7001"
        ),
    ]
    for reply in replies:
        with pytest.raises(ConfigurationError, match=r"redis\+cluster://"), translating("x"):
            raise reply
    with pytest.raises(rexc.ResponseError, match="WRONGTYPE"), translating("x"):
        raise rexc.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")
    with pytest.raises(StoreUnavailable), translating("x"):
        raise rexc.ReadOnlyError("READONLY You can't write against a read only replica.")
