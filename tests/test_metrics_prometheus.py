"""The metrics people alert on, over real HTTP from the worker's endpoint and the session's
real Redis and in-process worker: run metrics by flow, served once for the deployment,
the reconciler's counters, content negotiation (OpenMetrics); and a lost node's attempt
in its history."""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from celery_graph import GraphRun
from celery_graph.state import state_for
from celery_graph.testing import free_port
from celery_graph.worker.endpoint import MetricsServer, WorkerCollector
from tests.support.helpers import wait_for
from tests.tasks import boom, step
from tests.test_durable import _create, fast_reconciler  # noqa: F401  (a fixture)

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def fetch(port: int, accept: str | None = None) -> tuple[str, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if accept:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=10) as r:
        return r.headers["Content-Type"], r.read().decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture()
def endpoints(app) -> Iterator[list[int]]:
    """Two workers' endpoints on the session's graph state (no exporter held before)."""
    state = state_for(app)
    state.client.delete(state.keys.metrics_exporter())
    servers = []
    for name in ("obs-a@host", "obs-b@host"):
        collector = WorkerCollector(state, name, 0.0, list, lambda: 0, None)
        server = MetricsServer(collector, free_port())
        server.start()
        servers.append(server)
    try:
        yield [s.port for s in servers]
    finally:
        for s in servers:
            s.stop()
        state.client.delete(state.keys.metrics_exporter())


def test_run_metrics_by_flow_are_served_once_for_the_deployment(app, endpoints, tag):
    flow_name = f"obs-{uuid.uuid4().hex[:8]}"
    ok = step.bind(tag=tag).as_graph().submit({}, app=app, flow_name=flow_name)
    bad = boom.bind(tag=tag).as_graph().submit({}, app=app, flow_name=flow_name)
    assert ok.get(timeout=20) is not None
    wait_for(lambda: bad.status().state == "failed", 20, "the failing run")
    first, second = endpoints
    finished = ("celery_graph_runs_finished_total", (("flow", flow_name), ("outcome", "failed")))
    a = wait_for(
        lambda: (s := samples(fetch(first)[1])).get(finished) == 1 and s,
        10,
        "the failed run counted",
    )
    assert a[("celery_graph_runs_started_total", (("flow", flow_name),))] == 2
    ok_key = ("celery_graph_runs_finished_total", (("flow", flow_name), ("outcome", "succeeded")))
    assert a[ok_key] == 1
    assert a[("celery_graph_run_duration_seconds_count", (("flow", flow_name),))] == 2
    assert a[("celery_graph_deployment_exporter", (("worker", "obs-a@host"),))] == 1
    assert ("celery_graph_reconciler_resent_nodes_total", ()) in a
    # the other worker serves its own figures only: summed over workers, a run counts once
    b = samples(fetch(second)[1])
    assert b[("celery_graph_deployment_exporter", (("worker", "obs-b@host"),))] == 0
    assert not [k for k in b if k[0].startswith(("celery_graph_runs_", "celery_graph_run_"))]
    assert not [k for k in b if k[0].startswith("celery_graph_reconciler_")]


def test_the_exposition_format_follows_the_accept_header(app, endpoints):
    port = endpoints[0]
    ctype, body = fetch(port)
    assert ctype.startswith("text/plain; version=0.0.4")
    assert "# EOF" not in body
    ctype, body = fetch(port, "application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
    assert ctype.startswith(OPENMETRICS)
    assert body.endswith("# EOF\n")
    assert "# TYPE celery_graph_worker_tasks_processed counter" in body


def test_a_lost_node_is_counted_kept_in_its_history_and_sent_again(app, tag, fast_reconciler):  # noqa: F811
    state = state_for(app)
    before = state.workers.run_counters()
    run_id, spec = _create(app, step.bind(tag=tag).as_graph())
    node = next(iter(spec.nodes))
    begun = state.scripts.begin(run_id, node, "dead@host", [])  # ...and its worker died
    assert begun.attempt == 1
    run = GraphRun(run_id, app=app)
    assert run.get(timeout=30) is not None
    history = wait_for(
        lambda: (h := run.status().nodes[node].history) and h[-1]["outcome"] == "succeeded" and h,
        10,
        "the node's second attempt",
    )
    assert [a["outcome"] for a in history] == ["lost", "succeeded"]
    assert history[0]["worker"] == "dead@host" and history[1]["worker"] != "dead@host"
    after = state.workers.run_counters()
    for what in ("lost", "resent", "reclaimed"):
        assert after.get(f"r|{what}", 0) >= before.get(f"r|{what}", 0) + 1, what
