"""Headless Chromium for the dashboard's browser tests (tests/test_ui_browser.py,
tests/test_fleet_pages.py), driven by Playwright: Debian's chromium, which ``make
chromium`` installs. A test module loads the fixtures with ``pytest_plugins =
("tests.support.browser",)``: ``playwright_api``, ``browser`` (one per module) and
``page`` (a fresh context per test, failing it on a page error or a console error)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.helpers import binary_or_skip, find_binary, starts_processes

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHROMIUMS = ("chromium", "chromium-browser", "google-chrome")
# how long the page waits for what a test expects
WAIT_MS = 15_000


def find_chromium() -> str | None:
    configured = os.environ.get("CELERY_GRAPH_CHROMIUM")
    if configured:
        return configured
    return find_binary(CHROMIUMS)


@starts_processes
def chromium_or_skip() -> str:
    """Debian's chromium (or CELERY_GRAPH_CHROMIUM); skips or fails as
    ``binary_or_skip`` says when there is none."""
    configured = os.environ.get("CELERY_GRAPH_CHROMIUM")
    if configured:
        return configured
    return binary_or_skip(
        CHROMIUMS, target="chromium", package="chromium", hint="set CELERY_GRAPH_CHROMIUM"
    )


@pytest.fixture(scope="module")
@starts_processes
def playwright_api() -> Any:
    # an ImportError here in CI is a failure (playwright is in the test extra)
    if os.environ.get("CI"):
        import playwright.sync_api as api
    else:
        api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    return api


@pytest.fixture(scope="module")
def browser(playwright_api: Any) -> Iterator[Any]:
    path = chromium_or_skip()
    with playwright_api.sync_playwright() as p:
        # Playwright gives the browser a fresh temporary profile (--user-data-dir)
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1440, "height": 660})
    context.set_default_timeout(WAIT_MS)
    pg = context.new_page()
    problems: list[str] = []
    pg.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    pg.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
    yield pg
    context.close()
    assert not problems, problems
