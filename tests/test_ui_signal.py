"""The dashboard and a wait_for() node: the node says it waits and since when, offers a
signal form (the page's flag) and the API delivers the payload."""

from __future__ import annotations

from celery_graph import wait_for
from tests.after_tasks import prepare, ship_if_approved
from tests.support.helpers import wait_for as wait_until
from tests.support.ui import Http

pytest_plugins = ("tests.support.ui_fixtures",)  # fixtures: ui, http, gates


def test_a_waiting_node_offers_a_signal_and_the_api_delivers_it(app, http: Http, tag):
    run = (prepare >> wait_for("approval") >> ship_if_approved).apply_async(tag=tag)
    data = wait_until(
        lambda: (
            (d := http.get(f"/api/runs/{run.id}"))["nodes"]["approval"]["state"] == "waiting" and d
        ),
        what="the wait",
    )
    assert list(data["waits"]) == ["approval"]
    assert data["stalled"]["approval"].startswith("waits for its signal")
    node = http.get(f"/api/runs/{run.id}/nodes/approval")
    assert node["signal"] is True and node["waiting_since"] is not None
    assert http.get(f"/api/runs/{run.id}/nodes/prepare")["signal"] is False
    status, body = http.request("POST", f"/api/runs/{run.id}/nodes/prepare/signal", {})
    assert status == 409 and f"run {run.id} has no wait 'prepare'" in body["error"]
    status, body = http.request(
        "POST", f"/api/runs/{run.id}/nodes/approval/signal", {"approved": True}
    )
    assert status == 400 and "payload" in body["error"]
    sent = http.post(
        f"/api/runs/{run.id}/nodes/approval/signal",
        {"payload": {"approved": True, "by": "dashboard"}},
    )
    assert sent == {"run_id": run.id, "wait": "approval", "delivered": True}
    assert run.get(timeout=30) == "shipped"
    assert http.get(f"/api/runs/{run.id}/nodes/approval")["signal"] is False
    status, body = http.request(
        "POST", f"/api/runs/{run.id}/nodes/approval/signal", {"payload": {"approved": False}}
    )
    assert status == 409 and "has ended" in body["error"]
