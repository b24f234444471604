"""Helpers of the beat tests (tests/test_beat.py, tests/test_django_beat.py): graphs no
other test shares, losing a stored graph the way an expiry does, and the run a
``run_graph`` message starts."""

from __future__ import annotations

import json
import secrets
import uuid
from typing import Any

from celery import Celery

from celery_graph import GraphRun
from celery_graph.client.submit import run_id_for
from celery_graph.protocol import RUN_GRAPH
from celery_graph.state import state_for
from tests.support.helpers import wait_for
from tests.tasks import add, double


def salted_flow(name: str = "beat") -> tuple[Any, int]:
    """``add >> double`` with a bound value of its own: a graph no other test uses."""
    salt = secrets.randbelow(10**9) + 10**9
    return (add.bind(y=salt) >> double).with_name(f"{name}-{salt}"), salt


def lose_graph(app: Celery, graph_id: str) -> None:
    """What an expired (or flushed) graph is to every process: gone from Redis and from
    this process's cache, which the in-process worker shares."""
    state = state_for(app)
    state.client.delete(state.keys.graph(graph_id))
    with state.graphs._lock:
        state.graphs._cache.pop(graph_id, None)
    assert not state.client.exists(state.keys.graph(graph_id))


def graph_stored(app: Celery, graph_id: str) -> bool:
    state = state_for(app)
    return bool(state.client.exists(state.keys.graph(graph_id)))


def run_of(task_id: str) -> str:
    """The run a run_graph message starts (or records): its task id is the key."""
    return run_id_for(f"celery-task:{task_id}")


def recorded(app: Celery, run_id: str, timeout: float = 20) -> dict[str, str]:
    """The run record once the message's run exists and has ended."""
    state = state_for(app)

    def ended() -> dict[str, str] | None:
        record = state.client.hgetall(state.keys.run(run_id))
        fields = {k.decode(): v.decode() for k, v in record.items()}
        return fields if fields.get("status") in ("succeeded", "failed", "cancelled") else None

    return wait_for(ended, timeout, f"run {run_id} to end")


def started_run(app: Celery, task_id: str, timeout: float = 20) -> GraphRun:
    """The run a run_graph message started, once its record exists (the worker creates
    it after the message arrives)."""
    state, run_id = state_for(app), run_of(task_id)
    wait_for(lambda: state.client.exists(state.keys.run(run_id)), timeout, f"run {run_id}")
    return GraphRun(run_id, app=app)


def send_like_beat(app: Celery, kwargs: dict[str, Any], task_id: str | None = None) -> str:
    """What beat does with an entry: ``app.send_task(entry.task, entry.args, entry.kwargs,
    **entry.options)``; the kwargs pass through JSON first, as a database row keeps them."""
    task_id = task_id or str(uuid.uuid4())
    app.send_task(RUN_GRAPH, (), json.loads(json.dumps(kwargs)), task_id=task_id)
    return task_id
