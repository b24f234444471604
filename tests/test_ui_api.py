"""The dashboard's JSON API, served by the real Tornado server in a thread, over the
session's real Redis and a real in-process Celery worker."""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict

import pytest

from celery_graph import GraphRun
from celery_graph.client.submit import run_id_for
from celery_graph.errors import MissingParameterError, RunNotFound, StoreUnavailable
from celery_graph.state import state_for
from celery_graph.ui import start
from celery_graph.ui.errors import ActionRefused, NotFound
from celery_graph.ui.listing import QueryError
from celery_graph.ui.server import status_of
from celery_graph.worker.heartbeat import Heartbeat
from tests.support.helpers import wait_for
from tests.support.ui import FLOWER, Http
from tests.ui_tasks import ETL, gated, ui_echo, ui_fail_once, ui_never

pytest_plugins = ("tests.support.ui_fixtures",)  # fixtures: ui, http, gates


def wait_state(http: Http, run_id: str, states: tuple[str, ...], timeout: float = 20) -> dict:
    return wait_for(
        lambda: (d := http.get(f"/api/runs/{run_id}"))["state"] in states and d,
        timeout,
        f"run {run_id} to be {'/'.join(states)}",
    )


def wait_node(http: Http, run_id: str, node: str, state: str, timeout: float = 20) -> dict:
    return wait_for(
        lambda: (d := http.get(f"/api/runs/{run_id}"))["nodes"][node]["state"] == state and d,
        timeout,
        f"node {node} of run {run_id} to be {state}",
    )


def server_time(app) -> float:
    return state_for(app).runs.time()


def test_a_run_holds_the_fields_of_status_json_and_is_named_after_its_flow(app, http):
    run = ETL.apply_async(n=3)  # started in code, not from the page
    assert run.get(timeout=20) == {"rows": [10, 20, 30], "count": 3}
    data = http.get(f"/api/runs/{run.id}")
    status = run.status()
    assert {
        k: data[k] for k in ("run_id", "state", "graph_id", "created", "finished", "error", "nodes")
    } == {
        "run_id": run.id,
        "state": "succeeded",
        "graph_id": status.graph_id,
        "created": status.created,
        "finished": status.finished,
        "error": None,
        "nodes": {nid: asdict(n) for nid, n in status.nodes.items()},
    }
    assert data["flow"] == "ui-etl"  # its graph is the registered flow's
    assert data["progress"] == {
        "done": 4,
        "failed": 0,
        "total": 4,
        "parts": {"succeeded": 4, "skipped": 0, "failed": 0, "upstream_failed": 0, "cancelled": 0},
    }
    assert data["actions"] == {"cancel": False, "resume": False}
    assert data["inputs"] == {"n": 3}
    assert data["stalled"] == {}


def test_a_run_started_from_the_page_is_listed_with_flow_state_time_and_progress(app, http):
    t0 = server_time(app)
    started = http.post("/api/flows/ui-etl/runs", {"inputs": {"n": 2}})
    run = GraphRun(started["run_id"], app=app)
    assert run.get(timeout=20) == {"rows": [10, 20], "count": 2}
    assert state_for(app).runs.record(run.id)["flow"] == "ui-etl"
    page = http.get(f"/api/runs?flow=ui-etl&since={t0}")
    assert [r["run_id"] for r in page["runs"]] == [run.id]
    row = page["runs"][0]
    assert row["flow"] == "ui-etl" and row["state"] == "succeeded"
    assert row["created"] >= t0 and row["finished"] >= row["created"]
    assert row["duration"] == pytest.approx(row["finished"] - row["created"])
    assert (row["done"], row["nodes"]) == (4, 4)
    assert row["error"] is None


class Indexer:
    """The secondary indexes for the runs a test makes: in mode "indexed", as the engine
    writes them (at submission; when a run ends, here without waiting for the worker's
    end-of-run hooks); in mode "scan", removed, so the listings must work without them."""

    def __init__(self, app, mode: str) -> None:
        self.app = app
        self.mode = mode
        self.store = state_for(app).index

    def __call__(self, run_id: str) -> None:
        if self.mode == "indexed":
            state_for(self.app).runs.index_ended(run_id)
        else:
            self.remove(state_for(self.app).client)

    def remove(self, client) -> None:
        keys = self.store.keys
        client.delete(
            keys.index_marker(),
            keys.flows_index(),
            *(keys.state_runs(s) for s in ("succeeded", "failed", "cancelled")),
            *(keys.flow_runs(f) for f in ("ui-etl", "ui-boom", "ui-echo")),
        )


@pytest.fixture(params=["scan", "indexed"])
def indexes(request, app, rclient):
    indexer = Indexer(app, request.param)
    yield indexer
    indexer.remove(rclient)


def test_filters_and_search_find_exactly_the_runs_that_match(app, http, gates, tag, indexes):
    t0 = server_time(app)
    ok = http.post("/api/flows/ui-etl/runs", {"inputs": {}})["run_id"]
    wait_state(http, ok, ("succeeded",))
    bad = http.post("/api/flows/ui-boom/runs", {})["run_id"]
    wait_state(http, bad, ("failed",))
    held = gated(tag).apply_async().id  # not a registered flow: no name
    wait_node(http, held, "g1", "running")
    assert http.post(f"/api/runs/{held}/cancel")["state"] == "cancelled"
    keyed = http.post(
        "/api/flows/ui-echo/runs", {"inputs": {"x": 5}, "idempotency_key": f"order-{tag}"}
    )["run_id"]
    assert keyed == run_id_for(f"order-{tag}")
    wait_state(http, keyed, ("succeeded",))
    for run_id in (ok, bad, held, keyed):
        indexes(run_id)

    def ids(query: str) -> list[str]:
        page = http.get(f"/api/runs?since={t0}&{query}")
        return [r["run_id"] for r in page["runs"]]

    assert ids("") == [keyed, held, bad, ok]  # newest first
    assert ids("state=failed") == [bad]
    assert ids("state=cancelled") == [held]
    assert ids("state=succeeded") == [keyed, ok]
    assert ids("state=running") == []
    assert ids("flow=ui-etl") == [ok]
    assert ids("flow=ui-boom&state=failed") == [bad]
    assert ids("flow=ui-boom&state=succeeded") == []
    created = {r["run_id"]: r["created"] for r in http.get(f"/api/runs?since={t0}")["runs"]}
    assert ids(f"until={created[bad]}") == [bad, ok]
    sources = {
        http.get(f"/api/runs?since={t0}&{q}")["source"]
        for q in ("state=failed", "flow=ui-boom&state=failed")
    }
    # indexed: the indexes answer (from the first indexed run on; nothing older is in range)
    assert sources == ({"index"} if indexes.mode == "indexed" else {"scan"})
    # a registered flow is also named by its graph (runs started by beat or a canvas carry
    # no name): its index by name is not all of its runs, so the run index is read
    assert http.get(f"/api/runs?since={t0}&flow=ui-etl")["source"] == "scan"

    def search(text: str) -> list[tuple[str, str]]:
        page = http.get(f"/api/runs?q={text}")
        assert page["source"] == "search"
        return [(r["run_id"], r["matched"]) for r in page["runs"]]

    assert search(bad) == [(bad, "run id")]
    assert (bad, "run id prefix") in search(bad[:12])
    assert search(f"order-{tag}") == [(keyed, "idempotency key")]
    assert search(f"no-such-key-{tag}") == []


def test_node_detail_has_attempts_worker_times_result_error_and_flower_link(app, http):
    ok = http.post("/api/flows/ui-etl/runs", {})["run_id"]
    wait_state(http, ok, ("succeeded",))
    node = http.get(f"/api/runs/{ok}/nodes/transform")
    assert node["state"] == "succeeded" and node["attempts"] == 1
    assert node["worker"] and node["started"] <= node["finished"]
    assert node["result"]["preview"].split() == ["[", "10,", "20,", "30", "]"]
    assert node["task_id"] == f"{ok}:transform"
    assert node["flower"] == f"{FLOWER}/task/{ok}:transform"
    assert node["preds"] == ["extract"] and node["succs"] == ["load"]
    assert http.get(f"/api/runs/{ok}/nodes/load")["join"] is True

    bad = http.post("/api/flows/ui-boom/runs", {})["run_id"]
    run = wait_state(http, bad, ("failed",))
    assert run["error"]["node"] == "ui_boom" and run["error"]["type"] == "ValueError"
    failed = http.get(f"/api/runs/{bad}/nodes/ui_boom")
    assert failed["state"] == "failed" and failed["retry"] is True
    assert failed["error"]["message"] == "ui_boom went the node"
    assert "ui_boom went the node" in failed["error"]["traceback"]
    assert failed["result"] is None
    after = http.get(f"/api/runs/{bad}/nodes/ui_after")
    assert (
        after["state"] == "upstream_failed" and after["error"] is None and after["retry"] is False
    )
    status, body = http.request("GET", f"/api/runs/{bad}/nodes/nope")
    assert status == 404 and "no node 'nope'" in body["error"]


def test_a_map_node_shows_its_items(app, http):
    run_id = http.post("/api/flows/ui-mapped/runs", {"inputs": {"n": 4}})["run_id"]
    run = wait_state(http, run_id, ("succeeded",))
    assert run["items"] == {"ui_square": {"count": 4, "states": {"succeeded": 4}}}
    node = http.get(f"/api/runs/{run_id}/nodes/ui_square")
    assert node["map_source"] == "ui_items"
    assert [i["state"] for i in node["items"]["shown"]] == ["succeeded"] * 4
    assert node["result"]["preview"].split() == ["[", "0,", "1,", "4,", "9", "]"]


def test_a_waiting_node_says_why_and_cancel_ends_the_run_once(app, http):
    run = ui_never.as_graph().apply_async()
    data = wait_node(http, run.id, "ui_never", "queued")
    assert data["actions"] == {"cancel": True, "resume": False}
    assert data["stalled"]["ui_never"].startswith("queued ")
    assert "reconciler checks in" in data["stalled"]["ui_never"]
    assert http.get(f"/api/runs/{run.id}/nodes/ui_never")["waiting"] == data["stalled"]["ui_never"]
    assert http.post(f"/api/runs/{run.id}/cancel") == {
        "run_id": run.id,
        "cancelled": True,
        "state": "cancelled",
    }
    status, body = http.request("POST", f"/api/runs/{run.id}/cancel", {})
    assert status == 409 and "only a running or queued run can be cancelled" in body["error"]


def test_cancel_with_terminate_revokes_the_running_nodes(app, http):
    """(The kill itself, on a prefork worker: tests/test_celery_controls.py.)"""
    run = ui_never.as_graph().apply_async()
    wait_node(http, run.id, "ui_never", "queued")
    answer = http.post(f"/api/runs/{run.id}/cancel", {"terminate": True})
    assert answer == {"run_id": run.id, "cancelled": True, "state": "cancelled", "terminated": []}


def test_retry_of_one_failed_node_resumes_the_run(app, http, tag):
    run = (ui_fail_once.bind(key=tag) >> ui_echo.bind(x=3)).apply_async()
    wait_state(http, run.id, ("failed",))
    status, body = http.request("POST", f"/api/runs/{run.id}/nodes/ui_echo/retry", {})
    assert status == 409 and "only a failed node can be retried" in body["error"]
    sent = http.post(f"/api/runs/{run.id}/nodes/ui_fail_once/retry")
    assert sent["sent"] == ["ui_fail_once"]
    assert run.get(timeout=20) == {"x": 3, "times": 6}
    data = http.get(f"/api/runs/{run.id}")
    assert data["nodes"]["ui_fail_once"]["attempts"] == 2 and data["resumed"]
    status, body = http.request("POST", f"/api/runs/{run.id}/resume", {})
    assert status == 409 and "only a failed or cancelled run can be resumed" in body["error"]


def test_a_cancelled_run_resumes_from_the_api(app, http, gates, tag):
    run = gated(tag).apply_async()
    wait_node(http, run.id, "g1", "running")
    http.post(f"/api/runs/{run.id}/cancel")
    resumed = http.post(f"/api/runs/{run.id}/resume")
    assert resumed["state"] == "running"
    gates.release(2)  # g1 (left running by the cancel) and g2
    assert run.get(timeout=20) == {"x": 2, "times": 4}


def test_flows_list_their_inputs_and_start_with_inputs_and_keys(app, http, tag):
    data = http.get("/api/flows")
    assert set(data["names"]) >= {"ui-etl", "ui-boom", "ui-echo", "ui-mapped"}
    echo = next(f for f in data["flows"] if f["name"] == "ui-echo")
    assert echo["inputs"] == [
        {"name": "x", "required": True, "default": None, "nodes": ["ui_echo"]},
        {"name": "factor", "required": False, "default": "2", "nodes": ["ui_echo"]},
    ]
    etl = next(f for f in data["flows"] if f["name"] == "ui-etl")
    assert {i["name"]: i["default"] for i in etl["inputs"]} == {"n": "3", "factor": "10"}
    status, body = http.request("POST", "/api/flows/ui-echo/runs", {"inputs": {}})
    assert status == 400 and "'x'" in body["error"]
    body = {"inputs": {"x": 21}, "idempotency_key": f"ui-key-{tag}"}
    first = http.post("/api/flows/ui-echo/runs", body)
    again = http.post("/api/flows/ui-echo/runs", body)
    assert first["run_id"] == again["run_id"] == run_id_for(f"ui-key-{tag}")
    assert GraphRun(first["run_id"], app=app).get(timeout=20) == {"x": 21, "times": 42}
    status, body = http.request("POST", "/api/flows/nope/runs", {})
    assert status == 404 and "no flow 'nope'" in body["error"]


def test_bad_requests_get_a_status_and_a_message_naming_the_problem(app, http):
    unknown = "0" * 32
    for path, code, words in [
        (f"/api/runs/{unknown}", 404, "no run"),
        ("/api/runs?state=weird", 400, "state='weird'"),
        ("/api/runs?limit=0", 400, "limit='0'"),
        ("/api/runs?since=yesterday", 400, "since='yesterday'"),
        ("/api/runs?cursor=12:nope", 400, "cursor"),
        ("/api/nothing", 404, "no such API endpoint"),
    ]:
        status, body = http.request("GET", path)
        assert status == code and words in body["error"], (path, status, body)
    status, body = http.request(
        "POST", f"/api/runs/{unknown}/cancel", b"{}", {"Content-Type": "text/plain"}
    )
    assert status == 415 and "JSON" in body["error"]
    status, body = http.request(
        "POST", f"/api/runs/{unknown}/cancel", {}, {"Origin": "http://elsewhere.example"}
    )
    assert status == 403 and "elsewhere.example" in body["error"]
    status, body = http.request(
        "POST", f"/api/runs/{unknown}/cancel", {}, {"Sec-Fetch-Site": "cross-site"}
    )
    assert status == 403
    for raw, words in [(b"{not json", "not JSON"), (b"[1]", "a JSON object")]:
        status, body = http.request("POST", "/api/flows/ui-echo/runs", raw)
        assert status == 400 and words in body["error"], body
    status, body = http.request("POST", "/api/flows/ui-echo/runs", {"inputs": [1]})
    assert status == 400 and "inputs must be a JSON object" in body["error"]


def test_a_server_bug_is_a_500_in_the_log_not_a_404(app, http, rclient, caplog):
    """A run record the server cannot read (no graph id: written by something else) makes
    the views raise a builtin KeyError inside: the server's fault, not the request's."""
    run_id = uuid.uuid4().hex
    key = state_for(app).keys.run(run_id)
    rclient.hset(key, mapping={"status": "running", "created": "1"})
    rclient.expire(key, 60)
    with caplog.at_level(logging.ERROR, logger="celery_graph.ui"):
        for path in (f"/api/runs/{run_id}", f"/api/runs/{run_id}/graph"):
            status, body = http.request("GET", path)
            assert status == 500 and "KeyError" in body["error"], (path, status, body)
    logged = [r for r in caplog.records if r.name == "celery_graph.ui" and r.exc_info]
    assert len(logged) == 2 and all(r.exc_info[0] is KeyError for r in logged)
    assert f"GET /api/runs/{run_id}/graph failed" in logged[1].getMessage()


def test_each_error_answers_with_its_status():
    assert status_of(NotFound("no node")) == 404
    assert status_of(QueryError("limit")) == 400
    assert status_of(ActionRefused("running")) == 409
    assert status_of(RunNotFound("no run")) == 404
    assert status_of(MissingParameterError("x")) == 400
    assert status_of(StoreUnavailable("down")) == 503
    for bug in (KeyError("graph"), ValueError("bad"), TypeError("oops")):
        assert status_of(bug) is None  # a 500, logged


def test_workers_come_from_the_heartbeat_registry(app, http, tag):
    host = f"ui-{tag}@test"
    beat = Heartbeat(
        state_for(app), host, lambda: {"queues": ["q-b", "q-a"], "in_flight": 2}, interval=1
    )
    beat.start()
    try:
        workers = {w["hostname"]: w for w in http.get("/api/workers")["workers"]}
        w = workers[host]
        assert (w["state"], w["queues"], w["in_flight"], w["processed"]) == (
            "running",
            ["q-a", "q-b"],
            2,
            0,
        )
        assert 0 <= w["heartbeat_age"] < 5 and w["pid"] > 0
    finally:
        beat.stop()
    assert host not in {w["hostname"] for w in http.get("/api/workers")["workers"]}


def test_basic_auth_guards_everything_but_the_health_check(app):
    server = start(app, basic_auth="admin:s3cret,ops:pw2", url_prefix="/graphs")
    try:
        base = server.url.rstrip("/")
        assert base.endswith("/graphs")
        anonymous = Http(base)
        for path in ("/api/runs", "/", "/static/app.js", f"/runs/{'a' * 32}"):
            status, _ = anonymous.request("GET", path)
            assert status == 401, path
        assert Http(base, "admin:wrong").request("GET", "/api/runs")[0] == 401
        assert anonymous.request("GET", "/healthz") == (200, {"ok": True})
        for who in ("admin:s3cret", "ops:pw2"):
            assert Http(base, who).request("GET", "/api/info")[0] == 200
        status, page = Http(base, "admin:s3cret").request("GET", "/")
        assert status == 200 and '<base href="/graphs/">' in page
    finally:
        server.stop()


def test_flows_carry_their_success_rate_and_duration_percentiles_from_counters(app, http):
    """Issue 25: each flow's last day and week, from per-flow counters written once per
    ending: the numbers stay when the runs' records are gone (no scan of runs)."""

    def stats(name: str) -> dict:
        (flow,) = [f for f in http.get("/api/flows")["flows"] if f["name"] == name]
        return flow["stats"]

    before = {name: stats(name) for name in ("ui-echo", "ui-boom")}
    started = [http.post("/api/flows/ui-echo/runs", {"inputs": {"x": i}})["run_id"] for i in (1, 2)]
    started.append(http.post("/api/flows/ui-boom/runs", {})["run_id"])
    for run_id in started:
        wait_state(http, run_id, ("succeeded", "failed"))
    echo = wait_for(
        lambda: (
            # at least: a run an earlier test left may end meanwhile and count too
            (s := stats("ui-echo"))["day"]["runs"] >= before["ui-echo"]["day"]["runs"] + 2 and s
        ),
        30,
        "the two echo runs counted",
    )
    assert echo["day"]["succeeded"] >= before["ui-echo"]["day"]["succeeded"] + 2
    assert echo["week"]["runs"] >= before["ui-echo"]["week"]["runs"] + 2
    assert echo["day"]["p50"] is not None and 0 < echo["day"]["p95"] <= 60
    boom = stats("ui-boom")
    assert boom["day"]["failed"] >= before["ui-boom"]["day"]["failed"] + 1
    assert boom["day"]["success_rate"] < 1
    state = state_for(app)
    for run_id in started:  # the runs' records gone: the counters keep them (a run an
        state.client.delete(state.keys.run(run_id))  # earlier test left may add one)
    after = stats("ui-echo")
    for period in ("day", "week"):
        assert after[period]["runs"] >= echo[period]["runs"], (after, echo)
        assert after[period]["succeeded"] >= echo[period]["succeeded"], (after, echo)
    # a second listing of the same end counts nothing: once the worker has listed the run
    # (and counted it), listings of it that name a flow no run has leave that flow empty
    again = http.post("/api/flows/ui-echo/runs", {"inputs": {"x": 3}})["run_id"]
    wait_state(http, again, ("succeeded",))
    wait_for(
        lambda: state.client.zscore(state.keys.state_runs("succeeded"), again) is not None,
        10,
        "the worker's listing of the run's end",
    )
    record = state.runs.record(again)
    alone = f"ui-echo-relisted-{uuid.uuid4().hex[:8]}"
    for _ in range(2):
        state.runs.index_ended(again, {**record, "flow": alone})
    day = int(float(record["finished"]) // 86400)
    assert state.client.hgetall(state.keys.flow_stats(alone, day)) == {}
    assert stats("ui-echo")["day"]["runs"] >= after["day"]["runs"] + 1  # the worker's count


def test_a_large_run_is_answered_folded_with_the_kept_counts(app, http, monkeypatch):
    from celery_graph import Parallel
    from celery_graph.ui import views

    monkeypatch.setattr(views, "FOLD_OVER", 10)  # 48 nodes count as large here
    done = Parallel(tuple(ui_echo.bind(id=f"e{i}", x=i) for i in range(20)))
    parked = Parallel(tuple(ui_never.bind(id=f"n{i}") for i in range(25)))
    flow = ui_echo.bind(id="first", x=1) >> done >> ui_echo.bind(id="mid", x=3, factor=1)
    run = (flow >> parked >> ui_echo.bind(id="last", x=2)).apply_async()
    try:
        wait_for(
            lambda: run.summary().counts().get("queued") == 25,
            timeout=30,
            what="the parked fan-out to be released",
        )
        data = http.get(f"/api/runs/{run.id}")
        status = run.status()
        assert data["folded"] is True
        assert data["counts"] == status.counts() == {"succeeded": 22, "queued": 25, "pending": 1}
        parts = {"succeeded": 22, "skipped": 0, "failed": 0, "upstream_failed": 0, "cancelled": 0}
        assert data["progress"] == {"done": 22, "failed": 0, "total": 48, "parts": parts}
        graph = http.get(f"/api/runs/{run.id}/graph")
        solo = {b["id"] for b in graph["nodes"] if b["kind"] != "group"}
        groups = {b["id"]: b["members"] for b in graph["nodes"] if b["kind"] == "group"}
        # two groups: the larger one's counts are derived, the other's read
        assert len(groups) == 2 and set(data["nodes"]) == solo  # members are not listed
        for gid, ms in groups.items():
            expected: dict[str, int] = {}
            for m in ms:
                s = status.nodes[m].state
                expected[s] = expected.get(s, 0) + 1
            assert data["groups"][gid] == expected
        # a member's detail reads that node only
        member = http.get(f"/api/runs/{run.id}/nodes/n3")
        assert member["state"] == "queued" and member["node_id"] == "n3"
        finished = http.get(f"/api/runs/{run.id}/nodes/e3")
        assert finished["state"] == "succeeded" and finished["result"]["preview"]
    finally:
        run.cancel()


def test_a_large_queued_run_is_answered_folded_with_the_same_actions(app, http, monkeypatch):
    """The folded page offers what the whole one offers: a run waiting for a slot of its
    flow's limit can be cancelled, as on a small run's page."""
    from celery_graph import Parallel
    from celery_graph.ui import views

    monkeypatch.setattr(views, "FOLD_OVER", 10)
    parked = Parallel(tuple(ui_never.bind(id=f"n{i}") for i in range(12)))
    flow = (ui_echo.bind(id="first", x=1) >> parked).with_concurrency(1)
    holder = flow.apply_async()
    waiting = flow.apply_async()
    try:
        wait_for(lambda: waiting.status().state == "queued", 30, "the second run to queue")
        data = http.get(f"/api/runs/{waiting.id}")
        assert data["folded"] is True
        assert data["actions"] == {"cancel": True, "resume": False}
        running = http.get(f"/api/runs/{holder.id}")
        assert running["folded"] is True
        assert running["actions"] == {"cancel": True, "resume": False}
        assert set(running["progress"]["parts"]) == {
            "succeeded",
            "skipped",
            "failed",
            "upstream_failed",
            "cancelled",
        }
    finally:
        waiting.cancel()
        holder.cancel()
