"""The dashboard's pages for fleet control, in a real Chromium: the Schedules page lists a
schedule and pauses and resumes it; a run waiting for a concurrency slot shows its place
in line on the runs page and on its own page."""

from __future__ import annotations

import pytest

from celery_graph import GraphRun, schedule
from celery_graph.state import Slot, state_for
from tests.support.beat import run_of, send_like_beat
from tests.support.helpers import postruns
from tests.tasks import occupy, step

pytest_plugins = ("tests.support.ui_fixtures", "tests.support.browser")
pytestmark = pytest.mark.timeout(600)


def test_the_schedules_page_lists_pauses_and_resumes(app, ui, page, playwright_api, tag):
    name = f"page-{tag}"
    flow = step.bind(name="tick").as_graph(f"page-flow-{tag}")
    entry = schedule(flow, 300, {"tag": tag}, overlap="allow", name=name)
    with postruns() as done:
        task_id = send_like_beat(app, entry["kwargs"])
        assert done.wait(task_id)
    run_id = run_of(task_id)
    GraphRun(run_id, app=app).get(timeout=30)
    page.goto(f"{ui.url}schedules")
    row = page.locator(f'tr[data-schedule="{name}"]')
    playwright_api.expect(row).to_contain_text("every 300 s")
    playwright_api.expect(row).to_contain_text("allow")
    playwright_api.expect(row.locator(f'a[href="runs/{run_id}"]')).to_have_count(1)
    row.locator('button[data-action="pause"]').click()
    playwright_api.expect(row).to_contain_text("paused")
    assert state_for(app).schedules.get(name)["paused"]
    row.locator('button[data-action="resume"]').click()
    playwright_api.expect(row.locator('button[data-action="pause"]')).to_have_count(1)
    assert not state_for(app).schedules.get(name)["paused"]


def test_a_queued_run_shows_its_place_in_line(app, ui, page, playwright_api, tag):
    flow = (occupy.bind(id="enter") >> occupy.bind(id="leave")).with_name(f"page-lim-{tag}")
    flow = flow.with_concurrency(1)
    state = state_for(app)
    slot, ghost = Slot(f"page-lim-{tag}", "all", 1), "0" * 31 + "3"
    state.limits.enter(slot, ghost, None, lease=600)  # the slot is taken for the test
    run = flow.apply_async(tag=tag)
    try:
        page.goto(f"{ui.url}?state=queued")
        row = page.locator(f'tr[data-run="{run.id}"]')
        playwright_api.expect(row).to_have_attribute("data-state", "queued")
        playwright_api.expect(row).to_contain_text("#1 in line")
        page.goto(f"{ui.url}runs/{run.id}")
        playwright_api.expect(page.locator("#run-state")).to_have_attribute("data-state", "queued")
        playwright_api.expect(page.locator("main")).to_contain_text(
            "#1, waiting for a concurrency slot"
        )
    finally:
        run.cancel()
        state.limits.leave(slot.scope, slot.group, ghost, 30)
