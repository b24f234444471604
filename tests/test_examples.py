"""Every example in examples/ runs as written: ``python -m examples.<name>`` against a real
private Redis and real ``celery worker`` subprocesses (one Redis database per example,
so queues and keys never mix; RabbitMQ example: a unique queue, deleted afterwards)."""

from __future__ import annotations

import ast
import json
import re
import socket
import uuid

import pytest

from tests.support.processes import (
    base_env,
    celery_worker,
    cli,
    graph_worker,
    graph_worker_available,
    redis_db_url,
    run_py,
)

pytestmark = pytest.mark.slow  # each example with its own worker subprocess


def last_value(stdout: str):
    return ast.literal_eval(stdout.strip().splitlines()[-1])


def test_etl(redis_url: str) -> None:
    env = base_env(redis_db_url(redis_url, 4))
    with celery_worker("examples.etl", env):
        out = run_py(["-m", "examples.etl"], env)
        assert out.returncode == 0, out.stderr
        assert re.match(r"run [0-9a-f]{32}\n", out.stdout)
        assert last_value(out.stdout) == {"rows": [10, 20, 30, 40], "count": 4}
        # The same flow through the CLI, with an input.
        via_cli = cli("run", "examples.etl:flow", "--input", "n=2", "--wait", env=env)
        assert via_cli.returncode == 0, via_cli.stderr
        assert via_cli.stdout == '{"count": 2, "rows": [10, 20]}\n'


def test_map_reduce_named_group(redis_url: str) -> None:
    env = base_env(redis_db_url(redis_url, 5))
    with celery_worker("examples.map_reduce", env):
        out = run_py(["-m", "examples.map_reduce"], env)
        assert out.returncode == 0, out.stderr
        assert last_value(out.stdout) == [["the", 4], ["fox", 2], ["dog", 2]]
        shown = cli("show", "examples.map_reduce:flow", env=env)
        assert "merge  (join of count_0, count_1, count_2)" in shown.stdout


def test_gpu_routing(redis_url: str) -> None:
    """The gpu node runs on the worker consuming the "gpu" queue: graph-worker when the
    package has it (as the example's docstring says), else a plain celery worker."""
    env = base_env(redis_db_url(redis_url, 6))
    gpu_pool = graph_worker if graph_worker_available() else celery_worker
    with (
        celery_worker("examples.gpu_routing", env, "-Q", "celery", "-n", "cpu@%h"),
        gpu_pool("examples.gpu_routing", env, "-Q", "gpu", "-n", "gpu@%h"),
    ):
        out = run_py(["-m", "examples.gpu_routing"], env)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        result = ast.literal_eval(lines[1])
        assert result["indexed"] == 7
        assert result["embedded_on"].startswith("gpu@")
        assert result["indexed_on"].startswith("cpu@")
        assert re.search(r"^embed: ran on gpu@", out.stdout, re.M)
        assert re.search(r"^tokenize: ran on cpu@", out.stdout, re.M)
        if gpu_pool is graph_worker:
            workers = cli("workers", env=env)
            assert workers.returncode == 0, workers.stderr
            assert re.search(r"^gpu@\S+\s+running\s+\d+\s+gpu\s", workers.stdout, re.M)


def test_existing_app(redis_url: str) -> None:
    env = base_env(redis_db_url(redis_url, 7))
    with celery_worker("examples.existing_app", env):
        out = run_py(["-m", "examples.existing_app"], env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[0] == "plain celery: 242.5"
        assert out.stdout.splitlines()[-1] == "2026-01-01: revenue 242.50, largest order #1"


def rabbitmq_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not rabbitmq_up(), reason="no RabbitMQ on 127.0.0.1:5672")
def test_rabbitmq_broker(redis_url: str) -> None:
    from kombu import Connection

    broker = "amqp://guest:guest@127.0.0.1:5672//"
    queue = f"cgtest-example-{uuid.uuid4().hex[:8]}"
    env = base_env(redis_db_url(redis_url, 8), CELERY_BROKER_URL=broker, EXAMPLE_QUEUE=queue)
    try:
        with celery_worker("examples.rabbitmq_broker", env):
            out = run_py(["-m", "examples.rabbitmq_broker"], env)
            assert out.returncode == 0, out.stderr
            assert out.stdout.splitlines()[-1] == "Porto: mean 20.2, peak 23"
    finally:
        with Connection(broker) as conn:
            conn.default_channel.queue_delete(queue)


# -- DSL depth examples ----------------------------------------------------------------


def test_dynamic_fanout_with_delay(redis_url: str) -> None:
    env = base_env(redis_db_url(redis_url, 10))
    with celery_worker("examples.dynamic_fanout", env):
        out = run_py(["-m", "examples.dynamic_fanout"], env)
        assert out.returncode == 0, out.stderr
        assert last_value(out.stdout) == {"files": 5, "rows": 510}


def test_branching(redis_url: str) -> None:
    env = base_env(redis_db_url(redis_url, 11))
    with celery_worker("examples.branching", env):
        out = run_py(["-m", "examples.branching"], env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == [
            "shipped A-1 today | skipped: ['review']",
            "B-2 held for review | skipped: ['express']",
        ]


def test_shared_state(redis_url: str) -> None:
    env = base_env(redis_db_url(redis_url, 12))
    with celery_worker("examples.shared_state", env):
        out = run_py(["-m", "examples.shared_state"], env)
        assert out.returncode == 0, out.stderr
        assert last_value(out.stdout) == {"words": 10, "distinct": 7}


def test_canvas_interop(redis_url: str) -> None:
    env = base_env(redis_db_url(redis_url, 13))
    with celery_worker("examples.canvas_interop", env):
        out = run_py(["-m", "examples.canvas_interop"], env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == "receipt sent: 210 EUR"


def test_pipeline_file_from_python_and_from_the_cli(redis_url: str) -> None:
    env = base_env(redis_db_url(redis_url, 14))
    expected = {"published": [0, 2, 4], "rows": 6, "max": 5}
    with celery_worker("examples.pipeline_tasks", env):
        out = run_py(["-m", "examples.pipeline_tasks"], env)
        assert out.returncode == 0, out.stderr
        assert last_value(out.stdout) == expected
        via_cli = cli(
            "-A", "examples.pipeline_tasks", "run", "examples/pipeline.toml", "--wait", env=env
        )
        assert via_cli.returncode == 0, via_cli.stderr
        assert json.loads(via_cli.stdout) == expected
        broken = cli("-A", "examples.pipeline_tasks", "run", "tests/no-such.toml", env=env)
        assert broken.returncode == 2
        assert "cannot read the pipeline file" in broken.stderr


def test_approval(redis_url: str) -> None:
    env = base_env(redis_db_url(redis_url, 2))
    with celery_worker("examples.approval", env):
        out = run_py(["-m", "examples.approval"], env)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert re.match(r"run [0-9a-f]{32}$", lines[0])
        assert lines[1] == "waiting for approval; no worker is busy with it"
        assert lines[-1] == "order 7 shipped: approved by ana"
        # through the command line: the run waits until signalled
        started = cli("run", "examples.approval:flow", "--input", "order_id=8", env=env)
        assert started.returncode == 0, started.stderr
        run_id = started.stdout.split()[0]
        sent = cli(
            "signal", run_id, "approval", "--data", '{"approved": false, "by": "bob"}', env=env
        )
        assert sent.returncode == 0, sent.stderr
        done = cli("status", run_id, "--json", env=env)
        for _ in range(300):
            if json.loads(done.stdout)["state"] == "succeeded":
                break
            done = cli("status", run_id, "--json", env=env)
        result = json.loads(done.stdout)
        assert result["state"] == "succeeded", result
