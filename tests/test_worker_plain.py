"""celery-graph's worker features on a plain `celery -A APP worker` subprocess, `-D`,
`celery multi`, and the many-hosts rules of the registry (unique live names, server time,
a taken metrics port, Redis Cluster)."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid

import pytest

from celery_graph import GraphRun, node
from celery_graph.state import state_for
from celery_graph.testing import PrivateRedis, free_port
from celery_graph.worker.heartbeat import Heartbeat, live_workers
from tests.apps import ops_tasks as t
from tests.support import ROOT
from tests.support.apps import build_app
from tests.support.helpers import wait_for
from tests.support.processes import GRAPH_WORKER, start_worker, subprocess_env
from tests.support.servers import VersionRelay
from tests.test_worker_metrics import scrape

pytestmark = pytest.mark.slow  # the plain `celery worker` command in a subprocess

PREFIX = f"cgops:plain:{uuid.uuid4().hex[:6]}"
CELERY = [sys.executable, "-m", "celery"]


def plain_worker(
    tmp_path, name, broker, queue, *args, env=None, prefix=PREFIX, module="tests.apps.opsapp"
):
    return start_worker(
        tmp_path,
        name,
        broker_url=broker,
        queue=queue,
        prefix=prefix,
        extra_args=list(args),
        env=env,
        app=module,
        concurrency=1,
        graph=False,
    )


def listed(app, pid):
    return next((w for w in live_workers(app) if w.pid == pid), None)


def healthz(port):
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status
    except urllib.error.HTTPError as exc:
        return exc.code
    except urllib.error.URLError:  # not listening (yet, or any more)
        return 0
    except (ConnectionError, http.client.HTTPException):  # closed without an answer
        return 0


@pytest.fixture()
def queue():
    return f"cgops-plain-{uuid.uuid4().hex[:8]}"


def test_plain_celery_worker_serves_histograms_and_healthz_without_redis(
    redis_url, tmp_path, queue
):
    graph = PrivateRedis().start()
    port = free_port()
    w = plain_worker(
        tmp_path,
        "plainmet",
        redis_url,
        queue,
        "--redis-url",
        graph.url,
        "--metrics-port",
        str(port),
    )
    try:
        app = build_app(redis_url, queue, key_prefix=PREFIX, graph_redis_url=graph.url)
        info = wait_for(lambda: listed(app, w.pid), 20, f"registry entry\n{w.log()}")
        tag = uuid.uuid4().hex[:8]
        flow = (
            t.ops_first.bind(tag=tag)
            >> t.ops_long.bind(tag=tag, delay=0.2)
            >> t.ops_last.bind(tag=tag)
        )
        assert flow.submit(app=app).get(timeout=20) == "ops_last<-ops_long"
        labels = (
            ("queue", queue),
            ("task", "tests.apps.ops_tasks.ops_long"),
            ("worker", info.hostname),
        )
        finished = ("celery_graph_runs_finished_total", (("flow", ""), ("outcome", "succeeded")))
        wait = (("queue", queue), ("worker", info.hostname))  # each node's queue wait
        m = wait_for(  # the run's end is counted after its waiters are woken
            lambda: (
                (s := scrape(port)).get(("celery_graph_task_duration_seconds_count", labels)) == 1
                and s.get(finished) == 1
                and s.get(("celery_graph_runs_started_total", (("flow", ""),))) == 1
                and s.get(("celery_graph_queue_wait_seconds_count", wait)) == 3
                and s
            ),
            10,
            "the histogram of ops_long and the started and finished run (counts are "
            "written once a second)",
        )

        def plus(**more):
            return tuple(sorted((*labels, *more.items())))

        assert m[("celery_graph_task_duration_seconds_bucket", plus(le="+Inf"))] == 1
        assert m[("celery_graph_task_duration_seconds_bucket", plus(le="0.1"))] == 0
        assert m[("celery_graph_task_duration_seconds_sum", labels)] >= 0.2
        assert m[("celery_graph_tasks_total", plus(outcome="succeeded"))] == 1
        assert m[("celery_graph_runs_started_total", (("flow", ""),))] == 1
        assert m[finished] == 1
        assert m[("celery_graph_run_duration_seconds_count", (("flow", ""),))] == 1
        # the one worker serves the deployment-wide figures; every node's queue wait
        assert m[("celery_graph_deployment_exporter", (("worker", info.hostname),))] == 1
        assert m[("celery_graph_reconciler_resent_nodes_total", ())] == 0
        assert m[("celery_graph_queue_wait_seconds_bucket", (("le", "+Inf"), *wait))] == 3
        assert healthz(port) == 200

        graph.stop(kill=True)  # the graph Redis is gone: liveness does not care
        assert healthz(port) == 200
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert err.value.code == 503
        w.signal(signal.SIGTERM)
        w.wait(20)
    finally:
        w.stop()
        graph.stop(kill=True)


@pytest.mark.parametrize("long", ["graph task", "existing task"])
def test_plain_celery_worker_hands_back_on_sigterm_after_the_graceful_timeout(
    redis_url, tmp_path, queue, rclient, long
):
    """The cold shutdown after the graceful timeout hands the running node back: for an
    existing task without reject_on_worker_lost too (Celery 5.5+ cancels it and restores
    its message; on 5.3 and 5.4 the bootstep does the same, where the stopping pool failed
    it with WorkerLostError)."""
    app = build_app(redis_url, queue, key_prefix=PREFIX)
    w1 = plain_worker(tmp_path, "plainterm1", redis_url, queue, "--graceful-timeout", "1")
    w2 = None
    try:
        wait_for(lambda: listed(app, w1.pid), 20, f"registry entry\n{w1.log()}")
        tag = uuid.uuid4().hex[:8]
        if long == "graph task":
            middle = t.ops_long.bind(tag=tag, delay=3)
        else:
            app.finalize()  # shared tasks attach to the app
            with app:  # node() looks the task up on the current app
                middle = node(app.tasks[t.existing_long.name], id="ops_long", tag=tag, delay=3)
        run = (t.ops_first.bind(tag=tag) >> middle >> t.ops_last.bind(tag=tag)).submit(app=app)
        wait_for(
            lambda: any(e[:2] == ["start", "ops_long"] for e in t.events(rclient, tag)),
            20,
            "ops_long to start",
        )
        w1.signal(signal.SIGTERM)
        w2 = plain_worker(tmp_path, "plainterm2", redis_url, queue)
        w1.wait(15)
        assert "Restoring 1 unacknowledged message" in w1.log()
        assert run.get(timeout=30) == "ops_last<-ops_long"
        status = GraphRun(run.id, app=app).status()
        assert status.nodes["ops_long"].worker.startswith("plainterm2@")
        assert listed(app, w1.pid) is None  # deregistered on the way out
    finally:
        w1.stop()
        if w2 is not None:
            w2.stop()


def test_an_app_that_calls_install_gets_the_options_heartbeat_and_hand_back(
    redis_url, tmp_path, queue
):
    """tests.apps.installed declares its graph tasks before its app exists, so it calls
    celery_graph.install(app): its plain `celery worker` takes the options, registers,
    serves /healthz, runs graphs and leaves the registry on SIGTERM."""
    app = build_app(redis_url, queue, key_prefix=PREFIX)
    port = free_port()
    w = plain_worker(
        tmp_path,
        "installed",
        redis_url,
        queue,
        "--metrics-port",
        str(port),
        "--graceful-timeout",
        "5",
        module="tests.apps.installed",
    )
    try:
        wait_for(lambda: listed(app, w.pid), 20, f"registry entry\n{w.log()}")
        assert wait_for(lambda: healthz(port) == 200, 10, "/healthz")
        tag = uuid.uuid4().hex[:8]
        flow = t.ops_first.bind(tag=tag) >> t.ops_long.bind(tag=tag) >> t.ops_last.bind(tag=tag)
        assert flow.submit(app=app).get(timeout=20) == "ops_last<-ops_long"
        w.signal(signal.SIGTERM)
        assert w.wait(20) == 0
        assert listed(app, w.pid) is None
    finally:
        w.stop()


def test_a_second_worker_with_a_live_name_is_refused(redis_url, tmp_path, queue):
    app = build_app(redis_url, queue, key_prefix=PREFIX)
    w1 = plain_worker(tmp_path, "dup", redis_url, queue)
    w2 = None
    try:
        first = wait_for(lambda: listed(app, w1.pid), 20, f"registry entry\n{w1.log()}")
        w2 = plain_worker(tmp_path, "dup", redis_url, queue)
        assert w2.wait(30) != 0
        assert f"a worker named {first.hostname!r} is already running (pid {w1.pid}" in w2.log(), (
            w2.log()
        )
        assert "Traceback" not in w2.log()
        assert listed(app, w1.pid) is not None and w1.poll() is None
        assert [x.pid for x in live_workers(app) if x.hostname == first.hostname] == [w1.pid]
    finally:
        w1.stop()
        if w2 is not None:
            w2.stop()


def test_a_taken_metrics_port_is_one_clear_line(redis_url, tmp_path, queue):
    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))
    taken.listen()
    port = taken.getsockname()[1]
    w = plain_worker(tmp_path, "portbusy", redis_url, queue, "--metrics-port", str(port))
    try:
        assert w.wait(30) != 0
        assert f"cannot serve metrics on 127.0.0.1:{port}: Address already in use" in w.log()
        assert "Traceback" not in w.log()
    finally:
        w.stop()
        taken.close()


def test_a_malformed_graph_setting_stops_the_worker_with_one_clear_line(redis_url, tmp_path, queue):
    """Every graph message would fail on such a worker: it does not start."""
    env = {"CELERY_GRAPH_RESULT_TTL": "abc"}
    w = plain_worker(tmp_path, "badsetting", redis_url, queue, env=env)
    try:
        assert w.wait(30) != 0
        assert "CELERY_GRAPH_RESULT_TTL" in w.log() and "abc" in w.log(), w.log()
        assert "Traceback" not in w.log()
    finally:
        w.stop()


def test_a_graph_redis_older_than_6_2_stops_the_worker_with_one_clear_line(
    redis_url, tmp_path, queue
):
    relay = VersionRelay(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    w = plain_worker(
        tmp_path, "oldredis", redis_url, queue, env={"CELERY_GRAPH_REDIS_URL": relay.url}
    )
    try:
        assert w.wait(30) != 0
        assert relay.reported.startswith("6.0."), w.log()
        assert (
            f"the graph Redis ({relay.url}) runs Redis {relay.reported}; "
            "celery-graph needs Redis 6.2 or later (GETEX, BLMOVE)" in w.log()
        ), w.log()
        assert "Traceback" not in w.log()
    finally:
        w.stop()
        relay.close()


def test_registry_times_are_the_servers_not_a_skewed_host_clock(
    redis_url, tmp_path, queue, rclient
):
    app = build_app(redis_url, queue, key_prefix=PREFIX)
    skew = {
        "CGTEST_CLOCK_SKEW": "-3600",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "skew"), str(ROOT)]),
    }
    w = plain_worker(tmp_path, "skewed", redis_url, queue, env=skew)
    try:
        info = wait_for(lambda: listed(app, w.pid), 20, f"registry entry\n{w.log()}")
        sec, usec = rclient.time()
        server_now = sec + usec / 1e6
        assert abs(info.started - server_now) < 5 and abs(info.heartbeat - server_now) < 5
        assert info.heartbeat_age < 3
        score = rclient.zscore(f"{PREFIX}:workers", info.hostname)
        assert abs(score - server_now) < 5  # the index trims by server time too
    finally:
        w.stop()


def test_detach_with_a_pidfile_and_celery_multi(redis_url, tmp_path, queue):
    app = build_app(redis_url, queue, key_prefix=PREFIX)
    env = subprocess_env(
        CGOPS_BROKER_URL=redis_url, CGOPS_QUEUE=queue, CELERY_GRAPH_HEARTBEAT_INTERVAL="1"
    )
    pidfile, port = tmp_path / "det.pid", free_port()
    subprocess.run(
        [
            *GRAPH_WORKER,
            "-A",
            "tests.apps.opsapp",
            "-D",
            "--pidfile",
            str(pidfile),
            "--logfile",
            str(tmp_path / "det.log"),
            "-n",
            "det@%h",
            "-c",
            "1",
            "--key-prefix",
            PREFIX,
            "--metrics-port",
            str(port),
            "--without-mingle",
        ],
        env=env,
        cwd=ROOT,
        check=True,
        timeout=30,
    )
    pid = wait_for(
        lambda: pidfile.exists() and pidfile.read_text().strip() and int(pidfile.read_text()),
        20,
        "the pidfile",
    )
    try:
        wait_for(lambda: listed(app, pid), 20, (tmp_path / "det.log").read_text())
        assert wait_for(lambda: healthz(port) == 200, 10, "/healthz")
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(
        lambda: listed(app, pid) is None and not pidfile.exists(), 20, "the detached worker to stop"
    )

    multi = [*CELERY, "multi"]
    common = [
        "-A",
        "tests.apps.opsapp",
        f"--pidfile={tmp_path}/%n.pid",
        f"--logfile={tmp_path}/%n%I.log",
    ]
    subprocess.run(
        [*multi, "start", "m1", *common, "-c", "1", f"--key-prefix={PREFIX}", "--without-mingle"],
        env=env,
        cwd=ROOT,
        check=True,
        timeout=60,
        capture_output=True,
    )
    try:
        info = wait_for(
            lambda: next((w for w in live_workers(app) if w.hostname.startswith("m1@")), None),
            20,
            "the multi worker in the registry",
        )
    finally:
        subprocess.run(
            [*multi, "stopwait", "m1", *common], env=env, cwd=ROOT, timeout=60, capture_output=True
        )
    assert listed(app, info.pid) is None


def test_registry_on_redis_cluster(redis_url, cluster_url):
    app = build_app(
        redis_url, "cgops-cluster-reg", key_prefix=f"{PREFIX}:c", graph_redis_url=cluster_url
    )
    state = state_for(app)
    beat = Heartbeat(state, "c1@host", lambda: {"queues": ["q"], "in_flight": 0}, interval=1)
    beat.start()
    try:
        state.workers.count_task("c1@host", "t", "q", "succeeded", 0.01, (0.1,), 3)
        beat.beat()
        (info,) = [w for w in live_workers(app) if w.hostname == "c1@host"]
        assert info.metrics["processed"] == 1 and info.queues == ["q"]
        again = Heartbeat(state, "c1@host", lambda: {"queues": []}, interval=1)
        again.node = "elsewhere"  # another host: the live name is refused
        with pytest.raises(Exception, match="already running"):
            again.start()
    finally:
        beat.stop()
    assert not [w for w in live_workers(app) if w.hostname == "c1@host"]
