"""Old import path, kept for tests written against it: the dashboard's helpers are in
tests/support/ui.py, Chromium in tests/support/browser.py."""

from tests.support.browser import CHROMIUM_ARGS, chromium_or_skip, find_chromium
from tests.support.ui import FLOWER, Gates, Http, index_runs, seed_runs, unseed_runs

__all__ = [
    "CHROMIUM_ARGS",
    "FLOWER",
    "Gates",
    "Http",
    "chromium_or_skip",
    "find_chromium",
    "index_runs",
    "seed_runs",
    "unseed_runs",
]
