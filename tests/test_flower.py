"""A real Flower process sees graph nodes as ordinary Celery tasks: under their own task
names, with task ids "<run_id>:<node_id>" and the run id in the `_graph` keyword."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import uuid

import pytest

from celery_graph.testing import free_port
from tests.apps import ops_tasks as t
from tests.apps.harness import WorkerProcess
from tests.support import ROOT
from tests.support.apps import build_app
from tests.support.helpers import starts_processes, wait_for
from tests.support.processes import start_worker, subprocess_env

PREFIX = f"cgops:flower:{uuid.uuid4().hex[:6]}"


def get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read().decode()
    except OSError:
        return None


@pytest.fixture()
@starts_processes
def flower(redis_url, tmp_path, request):
    """Flower and one worker; ``request.param``: the worker's extra environment."""
    queue = f"cgops-flower-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = subprocess_env(
        CGOPS_BROKER_URL=redis_url, CGOPS_QUEUE=queue, FLOWER_UNAUTHENTICATED_API="true"
    )
    proc = WorkerProcess(
        ["-A", "tests.apps.opsapp", "flower", f"--port={port}", "--address=127.0.0.1"],
        env,
        tmp_path / "flower.log",
        cmd=[sys.executable, "-m", "celery"],
    )
    worker = start_worker(
        tmp_path,
        "fl1",
        broker_url=redis_url,
        queue=queue,
        prefix=PREFIX,
        env=getattr(request, "param", None),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: get(f"{base}/healthcheck") == "OK", 30, f"Flower\n{proc.log()}")
        # Flower counts a worker online once it has its heartbeat events: from then on it
        # also receives the task events of that worker.
        wait_for(
            lambda: 'flower_worker_online{worker="fl1@' in (get(f"{base}/metrics") or ""),
            30,
            f"Flower to see the worker\n{worker.log()}",
        )
        yield build_app(redis_url, queue, key_prefix=PREFIX), base
    finally:
        worker.stop()
        proc.stop()


# eager successors on (the default: ops_long and ops_last run in the worker that ran
# ops_first, which sends their task events itself, executor/eager.py) and off (every node
# is a message the worker consumed)
@pytest.mark.parametrize(
    "flower",
    [None, {"CELERY_GRAPH_EAGER_SUCCESSORS": "0"}],
    ids=["eager", "published"],
    indirect=True,
)
def test_flower_lists_graph_nodes_under_their_task_names_with_the_run_id(flower):
    app, base = flower
    tag = uuid.uuid4().hex[:8]
    run = (
        t.ops_first.bind(tag=tag) >> t.ops_long.bind(tag=tag) >> t.ops_last.bind(tag=tag)
    ).submit(app=app)
    assert run.get(timeout=30) == "ops_last<-ops_long"

    def tasks_of_run():
        # the run id is in every node's kwargs ({"_graph": {"g", "r", "n"}}): Flower's
        # search finds all tasks of one run by it
        body = get(f"{base}/api/tasks?search={run.id}")
        found = json.loads(body) if body else {}
        done = [v for v in found.values() if v.get("state") == "SUCCESS"]
        return found if len(done) == 3 else None

    found = wait_for(tasks_of_run, 15, "Flower to list the run's three tasks")
    assert set(found) == {f"{run.id}:{n}" for n in ("ops_first", "ops_long", "ops_last")}
    for task_id, info in found.items():
        node = task_id.split(":", 1)[1]
        assert info["name"] == f"tests.apps.ops_tasks.{node}"
        assert info["worker"].startswith("fl1@")
        assert f"'r': '{run.id}'" in info["kwargs"] and f"'n': '{node}'" in info["kwargs"]

    # one task's page by id, the way a user follows a run from `celery-graph` to Flower
    info = json.loads(get(f"{base}/api/task/info/{run.id}:ops_long"))
    assert info["name"] == "tests.apps.ops_tasks.ops_long" and info["state"] == "SUCCESS"


@pytest.mark.slow
def test_flower_api_is_closed_without_auth_settings(redis_url, tmp_path):
    port = free_port()
    env = subprocess_env(CGOPS_BROKER_URL=redis_url, CGOPS_QUEUE="cgops-flower-closed")
    env.pop("FLOWER_UNAUTHENTICATED_API", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.apps.opsapp",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: get(f"{base}/healthcheck") == "OK", 30, "Flower")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{base}/api/tasks", timeout=5)
        assert err.value.code == 401
    finally:
        proc.kill()
        proc.wait(10)
