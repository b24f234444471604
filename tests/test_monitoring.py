"""deploy/monitoring/: the alert rules pass `promtool check rules` and their unit tests
(`promtool test rules`), the PrometheusRule holds the same groups, and a real Prometheus
scrapes a real `graph-worker`, loads the rules and answers every query of the Grafana
dashboard.

promtool and prometheus come from Debian's `prometheus` package, which `make prometheus`
installs (`make test` runs it first); without them these tests skip, saying why, where
it cannot be installed, and fail where it can and under CI (tests.support.helpers.
binary_or_skip)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from celery_graph.testing import free_port
from tests.support import ROOT
from tests.support.helpers import binary_or_skip, wait_for
from tests.support.processes import base_env, cli, graph_worker, redis_db_url

MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "celery-graph.rules.yml"
ALERTS = {
    "CeleryGraphFlowFailing",
    "CeleryGraphRunsStuck",
    "CeleryGraphResendSpike",
    "CeleryGraphNodesLost",
    "CeleryGraphNoLiveWorkers",
}
# runs promtool and a Prometheus server: slow
pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


@pytest.fixture(scope="module")
def promtool() -> str:
    return binary_or_skip(["promtool"], target="prometheus", package="prometheus")


def test_the_rules_pass_promtool_check_and_their_unit_tests(promtool) -> None:
    checked = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 9 rules found" in checked.stdout
    tested = subprocess.run(
        [promtool, "test", "rules", "celery-graph.rules.test.yml"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = {
        r["alert"]
        for g in yaml.safe_load(RULES.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    assert alerts == ALERTS


def test_the_prometheusrule_holds_the_same_groups() -> None:
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def dashboard_queries() -> list[str]:
    board = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    queries = [t["expr"] for p in board["panels"] for t in p["targets"]]
    assert len(queries) >= 10
    return queries


@pytest.fixture()
def prometheus(promtool) -> Iterator[tuple[str, int, Path]]:
    """Where a real Prometheus runs: its binary, a free port and a work directory (the
    test writes the config, with its worker as the target, and starts it)."""
    binary = binary_or_skip(["prometheus"], target="prometheus", package="prometheus")
    workdir = Path(tempfile.mkdtemp(prefix="cgprom-"))
    port = free_port()
    try:
        yield binary, port, workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def api(port: int, path: str, **params: str) -> dict:
    query = ("?" + urllib.parse.urlencode(params)) if params else ""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/{path}{query}", timeout=10) as r:
        return json.loads(r.read())


def test_a_real_prometheus_scrapes_a_worker_loads_the_rules_and_answers_the_dashboard(
    prometheus, redis_url
) -> None:
    binary, port, workdir = prometheus
    metrics_port = free_port()
    env = base_env(redis_db_url(redis_url, 7))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "celery-graph-workers",
                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
            }
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    with graph_worker(
        "celery_graph.examples.etl", env, "--metrics-port", str(metrics_port)
    ) as worker:
        ran = cli("run", "celery_graph.examples.etl:flow", "--name", "etl-prom", "--wait", env=env)
        assert ran.returncode == 0, worker.output() + ran.stderr
        server = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: _answers(port), 60, "prometheus to answer")
            target = wait_for(
                lambda: [
                    t for t in api(port, "targets")["data"]["activeTargets"] if t["health"] == "up"
                ],
                60,
                "the worker's endpoint scraped",
            )
            assert target[0]["labels"]["job"] == "celery-graph-workers"
            finished = wait_for(
                lambda: api(
                    port,
                    "query",
                    query='celery_graph_runs_finished_total{flow="etl-prom",outcome="succeeded"}',
                )["data"]["result"],
                60,
                "the run counted by flow",
            )
            assert finished[0]["value"][1] == "1"
            wait = api(port, "query", query="celery_graph_queue_wait_seconds_count")
            assert sum(float(r["value"][1]) for r in wait["data"]["result"]) == 4  # 4 nodes

            groups = wait_for(
                lambda: (
                    (g := api(port, "rules")["data"]["groups"])
                    and all(
                        r.get("lastEvaluation", "").startswith("20") for x in g for r in x["rules"]
                    )
                    and g
                ),
                60,
                "the rules evaluated",
            )
            rules = [r for g in groups for r in g["rules"]]
            assert {r["name"] for r in rules if r["type"] == "alerting"} == ALERTS
            assert all(r["health"] == "ok" for r in rules), [
                (r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"
            ]
            # a worker answers: the no-live-workers alert goes quiet (it may be pending from
            # an evaluation before the first scrape)
            wait_for(
                lambda: (
                    next(
                        r
                        for g in api(port, "rules")["data"]["groups"]
                        for r in g["rules"]
                        if r["name"] == "CeleryGraphNoLiveWorkers"
                    )["state"]
                    == "inactive"
                ),
                30,
                "CeleryGraphNoLiveWorkers inactive while a worker is scraped",
            )

            for expr in dashboard_queries():
                q = expr.replace("$__rate_interval", "1m").replace('"$flow"', '".*"')
                answer = api(port, "query", query=q)
                assert answer["status"] == "success", (expr, answer)
            shown = api(
                port,
                "query",
                query='sum by (flow, outcome) (celery_graph_runs_finished_total{flow=~".*"})',
            )["data"]["result"]
            assert {"flow": "etl-prom", "outcome": "succeeded"} in [r["metric"] for r in shown]
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False
