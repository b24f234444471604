"""The dashboard in a real headless Chromium (Debian's, driven by Playwright), against the
real server, Redis and worker: the runs list, every node's state on the run page, a live
run changing colour, cancel and resume from the page, starting a flow from the page.

Set CELERY_GRAPH_UI_SCREENSHOTS=docs/img to keep the screenshots the README shows."""

from __future__ import annotations

import os
import shutil

import pytest

from celery_graph.state import state_for
from celery_graph.worker.heartbeat import Heartbeat
from tests.support.browser import WAIT_MS
from tests.support.helpers import wait_for
from tests.ui_tasks import gated

pytest_plugins = ("tests.support.ui_fixtures", "tests.support.browser")
# Chromium and the dashboard on a loaded machine: longer than a test's default timeout
pytestmark = pytest.mark.timeout(600)

COLOURS = {  # the fill of a node's box in each state (style.css)
    "pending": "rgb(208, 208, 208)",
    "running": "rgb(255, 213, 79)",
    "succeeded": "rgb(102, 187, 106)",
    "failed": "rgb(239, 83, 80)",
    "upstream_failed": "rgb(244, 169, 168)",
    "cancelled": "rgb(158, 158, 158)",
}


def expect(playwright_api, locator):
    # 20 s, not Playwright's 5: on a loaded CI machine a search's answer once took longer
    playwright_api.expect.set_options(timeout=20_000)
    return playwright_api.expect(locator)


def node(page, node_id: str):
    return page.locator(f'g.node[data-node="{node_id}"]')


def fill_of(page, node_id: str) -> str:
    return node(page, node_id).locator("rect.box").evaluate("e => getComputedStyle(e).fill")


def wait_api_state(http, run_id: str, state: str):
    return wait_for(
        lambda: http.get(f"/api/runs/{run_id}")["state"] == state, 20, f"run {run_id} to be {state}"
    )


def shot(page, tmp_path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    keep = os.environ.get("CELERY_GRAPH_UI_SCREENSHOTS")
    if keep:
        os.makedirs(keep, exist_ok=True)
        shutil.copy(path, os.path.join(keep, name))


def test_the_runs_list_shows_a_finished_run_and_filters_it(app, ui, http, page, playwright_api):
    run_id = http.post("/api/flows/ui-etl/runs", {"inputs": {"n": 2}})["run_id"]
    wait_api_state(http, run_id, "succeeded")
    page.goto(ui.url)
    row = page.locator(f'tr[data-run="{run_id}"]')
    expect(playwright_api, row).to_have_attribute("data-state", "succeeded")
    expect(playwright_api, row).to_contain_text("ui-etl")
    expect(playwright_api, row).to_contain_text("4/4")
    page.select_option("#state-filter", "failed")
    expect(playwright_api, row).to_have_count(0)
    assert "state=failed" in page.url
    page.select_option("#state-filter", "succeeded")
    page.fill("#search", run_id)
    page.press("#search", "Enter")
    expect(playwright_api, page.locator("tr[data-run]")).to_have_count(1)
    expect(playwright_api, row).to_contain_text("run id")
    row.locator("a").click()
    expect(playwright_api, page.locator("#run-state")).to_have_attribute("data-state", "succeeded")


def test_the_run_page_shows_every_node_with_its_state(app, ui, http, page, playwright_api):
    run_id = http.post("/api/flows/ui-boom/runs", {})["run_id"]
    wait_api_state(http, run_id, "failed")
    page.goto(f"{ui.url}runs/{run_id}")
    expect(playwright_api, page.locator("#run-state")).to_have_attribute("data-state", "failed")
    states = {n: s["state"] for n, s in http.get(f"/api/runs/{run_id}")["nodes"].items()}
    assert states == {"ui_boom": "failed", "ui_after": "upstream_failed"}
    assert page.locator("g.node").count() == len(states)
    for node_id, state in states.items():
        expect(playwright_api, node(page, node_id)).to_have_attribute("data-state", state)
        assert fill_of(page, node_id) == COLOURS[state]
    expect(playwright_api, page.locator("#run-error")).to_contain_text(
        "ValueError: ui_boom went the node"
    )
    node(page, "ui_boom").click()
    detail = page.locator("#detail")
    expect(playwright_api, detail).to_contain_text("ui_boom went the node")
    expect(playwright_api, detail.locator("pre.traceback")).to_contain_text("Traceback")
    expect(playwright_api, detail.locator("#retry-node")).to_be_visible()
    attempts = detail.locator("#history tr.attempt")  # the node's attempt history
    expect(playwright_api, attempts).to_have_count(1)
    expect(playwright_api, attempts.first).to_contain_text("failed")
    expect(playwright_api, attempts.first).to_contain_text("ValueError: ui_boom went the node")
    expect(playwright_api, detail.locator("#flower-link")).to_have_attribute(
        "href", f"http://flower.test:5555/task/{run_id}:ui_boom"
    )


def test_a_live_run_changes_colour_as_its_nodes_finish(
    app, ui, http, gates, tag, page, playwright_api, tmp_path
):
    run = gated(tag).apply_async()
    page.goto(f"{ui.url}runs/{run.id}")
    expect(playwright_api, node(page, "g1")).to_have_attribute("data-state", "running")
    assert fill_of(page, "g1") == COLOURS["running"]
    expect(playwright_api, node(page, "done")).to_have_attribute("data-state", "pending")
    gates.release(1)  # g1 finishes: g2 starts, quick runs
    expect(playwright_api, node(page, "g1")).to_have_attribute("data-state", "succeeded")
    expect(playwright_api, node(page, "quick")).to_have_attribute("data-state", "succeeded")
    expect(playwright_api, node(page, "g2")).to_have_attribute("data-state", "running")
    assert fill_of(page, "g1") == COLOURS["succeeded"]
    node(page, "g1").click()
    expect(playwright_api, page.locator("#result")).to_contain_text('"g1"')
    shot(page, tmp_path, "ui-run.png")
    gates.release(1)
    expect(playwright_api, page.locator("#run-state")).to_have_attribute("data-state", "succeeded")
    expect(playwright_api, node(page, "done")).to_have_attribute("data-state", "succeeded")
    assert fill_of(page, "done") == COLOURS["succeeded"]
    assert run.get(timeout=10) == {"x": 2, "times": 4}


def test_cancel_and_resume_from_the_page(app, ui, http, gates, tag, page, playwright_api):
    run = gated(tag).apply_async()
    page.goto(f"{ui.url}runs/{run.id}")
    expect(playwright_api, node(page, "g1")).to_have_attribute("data-state", "running")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel")
    expect(playwright_api, page.locator("#run-state")).to_have_attribute("data-state", "cancelled")
    assert http.get(f"/api/runs/{run.id}")["state"] == "cancelled"
    expect(playwright_api, page.locator("#cancel")).to_be_disabled()
    page.click("#resume")
    expect(playwright_api, page.locator("#run-state")).to_have_attribute("data-state", "running")
    gates.release(2)
    expect(playwright_api, page.locator("#run-state")).to_have_attribute("data-state", "succeeded")


def test_cancel_and_terminate_from_the_page(app, ui, http, gates, tag, page, playwright_api):
    """The button posts {"terminate": true}: the run is cancelled and its running node
    revoked with terminate (a threads-pool worker, as here, cannot kill it; a prefork
    one does: tests/test_celery_controls.py)."""
    run = gated(tag).apply_async()
    page.goto(f"{ui.url}runs/{run.id}")
    expect(playwright_api, node(page, "g1")).to_have_attribute("data-state", "running")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#terminate")
    expect(playwright_api, page.locator("#run-state")).to_have_attribute("data-state", "cancelled")
    expect(playwright_api, page.locator("#notice")).to_contain_text("running nodes terminated")
    expect(playwright_api, page.locator("#terminate")).to_be_disabled()
    gates.release(1)


def test_start_a_flow_with_inputs_from_the_page(app, ui, http, page, playwright_api):
    page.goto(f"{ui.url}flows")
    form = page.locator('form[data-flow="ui-echo"]')
    form.locator('[data-input="x"]').fill("7")
    form.locator("button[type=submit]").click()
    page.wait_for_url("**/runs/*")
    expect(playwright_api, page.locator("#run-state")).to_have_attribute("data-state", "succeeded")
    run_id = page.url.rstrip("/").rsplit("/", 1)[1]
    assert http.get(f"/api/runs/{run_id}")["flow"] == "ui-echo"
    node(page, "ui_echo").click()
    expect(playwright_api, page.locator("#result")).to_contain_text('"times": 14')


def test_the_workers_page_lists_the_registry(app, ui, page, playwright_api, tag, tmp_path):
    beat = Heartbeat(
        state_for(app), f"ui-page-{tag}@host", lambda: {"queues": ["celery"]}, interval=1
    )
    beat.start()
    try:
        page.goto(f"{ui.url}workers")
        row = page.locator(f'tr[data-worker="ui-page-{tag}@host"]')
        expect(playwright_api, row).to_contain_text("running")
        expect(playwright_api, row).to_contain_text("celery")
    finally:
        beat.stop()
    # and the runs page as the README shows it
    page.goto(ui.url)
    expect(playwright_api, page.locator("tr[data-run]").first).to_be_visible()
    shot(page, tmp_path, "ui-runs.png")


def test_approve_a_waiting_node_from_the_page(app, ui, http, tag, page, playwright_api):
    from celery_graph import wait_for as wait_node
    from tests.after_tasks import prepare, ship_if_approved

    run = (prepare >> wait_node("approval") >> ship_if_approved).apply_async(tag=tag)
    page.goto(f"{ui.url}runs/{run.id}")
    expect(playwright_api, node(page, "approval")).to_have_attribute("data-state", "waiting")
    node(page, "approval").click()
    page.fill("#signal-by", "ana")
    page.click("#approve")
    expect(playwright_api, page.locator("#run-state")).to_have_attribute("data-state", "succeeded")
    assert run.get(timeout=20) == "shipped"
    assert run.results()["approval"] == {"approved": True, "by": "ana"}


def test_the_run_page_lists_handlers_and_compensations(app, ui, http, tag, page, playwright_api):
    from tests.after_tasks import alert_fails, charge, refund, ship

    run = (charge.compensate(refund) >> ship).on_failure(alert_fails).apply_async(tag=tag)
    wait_api_state(http, run.id, "failed")
    page.goto(f"{ui.url}runs/{run.id}")
    expect(playwright_api, page.locator('#steps tr[data-step="charge.undo"]')).to_contain_text(
        "compensates charge"
    )
    row = page.locator('#steps tr[data-step="alert_fails"]')
    expect(playwright_api, row).to_contain_text("on_failure")
    expect(playwright_api, row).to_contain_text("RuntimeError: the pager is down")


def test_a_failed_run_page_explains_the_failure_once_with_times_in_their_zone(
    app, ui, http, browser, playwright_api, tmp_path
):
    """Issue 25: the bar shows the failed part and what never ran, the traceback appears
    once with the internal frames folded, node boxes carry durations, times their zone,
    and the timeline shows the nodes that ran."""
    context = browser.new_context(
        viewport={"width": 1440, "height": 760}, timezone_id="Europe/Paris"
    )
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    try:
        run_id = http.post("/api/flows/ui-boom/runs", {})["run_id"]
        wait_api_state(http, run_id, "failed")
        page.goto(f"{ui.url}runs/{run_id}")
        expect(playwright_api, page.locator("#run-state")).to_have_attribute("data-state", "failed")
        bar = page.locator("#run-head .bar")
        widths = {
            part: bar.locator(f'[data-part="{part}"]').evaluate("e => e.style.width")
            for part in ("succeeded", "failed", "upstream_failed")
        }
        assert widths == {"succeeded": "0%", "failed": "50%", "upstream_failed": "50%"}
        expect(playwright_api, page.locator("#run-head")).to_contain_text("UTC+01:00")
        # the run's panel names the error; the traceback is in the node's panel only
        expect(playwright_api, page.locator("#run-error")).to_contain_text("ui_boom went the node")
        expect(playwright_api, page.locator("#run-error pre.traceback")).to_have_count(0)
        expect(playwright_api, node(page, "ui_boom").locator("text.sub")).to_contain_text("s")
        sub = node(page, "ui_boom").locator("text").last.text_content() or ""
        assert any(ch.isdigit() for ch in sub) and sub.rstrip("+").endswith("s"), sub
        page.locator("#run-error a").click()
        trace = page.locator("#detail pre.traceback")
        expect(playwright_api, trace).to_have_count(1)
        expect(playwright_api, trace).to_contain_text('ui_tasks.py", line')
        folded = trace.locator("details.internal")
        assert folded.count() >= 1
        expect(playwright_api, folded.first.locator("summary")).to_contain_text("internal frame")
        assert not folded.first.evaluate("e => e.open")  # folded until asked for
        expect(playwright_api, trace).to_contain_text("ValueError: ui_boom went the node")
        expect(playwright_api, page.locator("#detail")).to_contain_text("UTC+01:00")
        shot(page, tmp_path, "run-failed.png")
        page.click("#show-timeline")
        rows = page.locator("#timeline .row")
        expect(playwright_api, rows).to_have_count(1)  # ui_after never ran
        expect(playwright_api, rows.first).to_have_attribute("data-node", "ui_boom")
        expect(playwright_api, page.locator("#graph")).to_be_hidden()
        shot(page, tmp_path, "ui-timeline.png")
        page.click("#show-timeline")
        expect(playwright_api, page.locator("#graph")).to_be_visible()
    finally:
        context.close()


def test_bulk_cancel_and_resume_from_the_runs_list(app, ui, http, gates, tag, page, playwright_api):
    runs = [gated(tag).apply_async() for _ in range(2)]
    for run in runs:
        wait_for(lambda r=run: r.status().nodes["g1"].state == "running", 20, "g1 running")
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{ui.url}?state=running")
    for run in runs:
        page.locator(f'tr[data-run="{run.id}"] input.pick').check()
    expect(playwright_api, page.locator("#bulk-note")).to_have_text("2 selected")
    page.click("#bulk-cancel")
    expect(playwright_api, page.locator("#bulk-done")).to_have_text("cancelled 2 runs")
    for run in runs:
        assert http.get(f"/api/runs/{run.id}")["state"] == "cancelled"
    page.goto(f"{ui.url}?state=cancelled")
    for run in runs:
        row = page.locator(f'tr[data-run="{run.id}"]')
        expect(playwright_api, row.locator('[data-part="cancelled"]')).not_to_have_attribute(
            "style", "width: 0%;"
        )
        row.locator("input.pick").check()
    expect(playwright_api, page.locator("#bulk-cancel")).to_be_disabled()  # none is running
    page.click("#bulk-resume")
    expect(playwright_api, page.locator("#bulk-done")).to_have_text("resumed 2 runs")
    gates.release(4)  # g1 (left running by the cancel) and g2 of each run
    for run in runs:
        assert run.get(timeout=30) == {"x": 2, "times": 4}


def test_the_flows_page_shows_each_flows_last_day_and_week(
    app, ui, http, page, playwright_api, tmp_path
):
    run_id = http.post("/api/flows/ui-echo/runs", {"inputs": {"x": 5}})["run_id"]
    wait_api_state(http, run_id, "succeeded")
    wait_for(
        lambda: next(f for f in http.get("/api/flows")["flows"] if f["name"] == "ui-echo")["stats"][
            "day"
        ]["runs"],
        10,
        "the run counted",
    )
    page.goto(f"{ui.url}flows")
    day = page.locator('#flow-ui-echo table.stats tr[data-window="last day"]')
    expect(playwright_api, day).to_be_visible()
    expect(playwright_api, day.locator("td.rate")).to_contain_text("%")
    expect(
        playwright_api, page.locator('#flow-ui-echo tr[data-window="last week"]')
    ).to_be_visible()
    shot(page, tmp_path, "ui-flows.png")


def test_a_folded_run_page_colours_groups_and_lists_a_group(
    app, ui, http, page, playwright_api, monkeypatch
):
    """A run of more than FOLD_OVER nodes (lowered here): its groups are coloured from the
    counts the server sends, a group lists its counts and members, a member its state."""
    from celery_graph import Parallel
    from celery_graph.ui import views
    from tests.ui_tasks import ui_echo

    monkeypatch.setattr(views, "FOLD_OVER", 10)
    members = tuple(ui_echo.bind(id=f"e{i}", x=i) for i in range(40))
    run = (
        ui_echo.bind(id="first", x=1) >> Parallel(members) >> ui_echo.bind(id="last", x=2)
    ).apply_async()
    run.get(timeout=30)
    assert http.get(f"/api/runs/{run.id}")["folded"] is True
    page.goto(f"{ui.url}runs/{run.id}")
    expect(playwright_api, page.locator("#run-state")).to_have_attribute("data-state", "succeeded")
    group = page.locator('g.node[data-kind="group"]').first
    expect(playwright_api, group).to_have_attribute("data-state", "succeeded")
    group.click()
    detail = page.locator("#detail")
    expect(playwright_api, detail.locator("table.group-counts")).to_contain_text("40")
    detail.locator("table.members a", has_text="e7").click()
    expect(playwright_api, detail).to_contain_text("e7")
    expect(playwright_api, detail.locator("#result")).to_contain_text('"times": 14')
