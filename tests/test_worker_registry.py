"""The worker registry and `celery-graph workers` output, with real graph-worker
subprocesses (heartbeat interval 1 s, so the TTL is 3 s)."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
import uuid

import pytest

from celery_graph.cli.output import print_workers
from celery_graph.keys import key_pattern
from celery_graph.worker.heartbeat import live_workers
from tests.apps import ops_tasks as t
from tests.support import ROOT
from tests.support.apps import build_app
from tests.support.helpers import starts_processes, wait_for
from tests.support.processes import start_worker, subprocess_env

PREFIX = f"cgops:registry:{uuid.uuid4().hex[:6]}"


@pytest.fixture()
@starts_processes
def setup(redis_url, tmp_path):
    queue = f"cgops-registry-{uuid.uuid4().hex[:8]}"
    started = []

    def worker(name, *args):
        w = start_worker(
            tmp_path, name, broker_url=redis_url, queue=queue, prefix=PREFIX, extra_args=list(args)
        )
        started.append(w)
        return w

    yield build_app(redis_url, queue, key_prefix=PREFIX), queue, worker
    for w in started:
        w.stop()


def entry(app, w):
    return next((x for x in live_workers(app) if x.pid == w.pid), None)


def test_worker_registers_beats_and_leaves_on_a_clean_stop(setup, rclient):
    app, queue, worker = setup
    before = time.time()
    w = worker("reg1", "-Q", f"{queue},cgops-registry-extra")
    info = wait_for(lambda: entry(app, w), 20, f"registry entry\n{w.log()}")
    assert info.hostname.startswith("reg1@")
    assert info.queues == sorted([queue, "cgops-registry-extra"])
    assert before - 1 < info.started <= time.time()
    assert info.state == "running"
    assert ".> task events: ON" in w.log()  # graph-worker's default, without -E
    first_beat = info.heartbeat
    wait_for(lambda: entry(app, w).heartbeat > first_beat, 5, "a second heartbeat")

    keys = [k.decode() for k in rclient.scan_iter(match=f"{PREFIX}:*")]
    pattern = key_pattern(PREFIX)
    assert keys and all(pattern.match(k) for k in keys), keys
    # everything expires with the worker: a TTL of at most 3 s (-2: expired since the scan,
    # when a loaded machine delays a heartbeat; -1, no TTL, would stay for ever)
    ttls = {k: rclient.ttl(k) for k in keys}
    assert all(t == -2 or 0 < t <= 3 for t in ttls.values()), ttls

    # the table `celery-graph workers` prints
    flow = t.ops_first.bind(tag=None)
    flow.submit(app=app).get(timeout=20)
    wait_for(lambda: entry(app, w).metrics.get("processed") == 1, 5, "metrics at next beat")
    out = io.StringIO()
    print_workers(live_workers(app), out)
    header, row = out.getvalue().splitlines()
    assert header.split()[:4] == ["WORKER", "STATE", "PID", "QUEUES"]
    cells = row.split()
    assert cells[0] == info.hostname and cells[1] == "running" and cells[2] == str(w.pid)
    assert cells[4].endswith("s") and cells[5] == "ago"  # heartbeat age
    assert cells[7:10] == ["1", "1", "0"]  # processed, ok, failed

    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0
    assert entry(app, w) is None  # removed at once, not after the TTL
    assert not list(rclient.scan_iter(match=f"{PREFIX}:worker*"))


def test_sigkilled_worker_vanishes_after_the_ttl(setup):
    app, _queue, worker = setup
    w = worker("reg2")
    wait_for(lambda: entry(app, w), 20, f"registry entry\n{w.log()}")
    w.stop()  # SIGKILL: no deregistration
    killed = time.monotonic()
    assert entry(app, w) is not None
    wait_for(lambda: entry(app, w) is None, 6, "the entry to expire")
    assert 1.5 < time.monotonic() - killed < 5  # ~TTL (3 s) after the last heartbeat


def test_celery_graph_workers_prints_the_workers(setup, redis_url):
    app, _queue, worker = setup
    w = worker("reg3")
    info = wait_for(lambda: entry(app, w), 20, f"registry entry\n{w.log()}")
    env = subprocess_env(
        CGOPS_BROKER_URL=redis_url, CGOPS_QUEUE="unused", CELERY_GRAPH_KEY_PREFIX=PREFIX
    )
    out = subprocess.run(
        [sys.executable, "-m", "celery_graph.cli", "-A", "tests.apps.opsapp", "workers"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert info.hostname in out and str(w.pid) in out
