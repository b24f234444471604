"""A small chaos check in the suite; `python -m tests.chaos` runs a bigger one."""

from __future__ import annotations

import pytest

from tests.chaos import run_chaos


@pytest.mark.timeout(180)  # above run_chaos's own 60 s wait, so a stuck run is reported
def test_random_worker_kills_lose_no_run_and_double_nothing(redis_url):
    report = run_chaos(redis_url, runs=30, kills=4, workers=3, seed=7)
    assert report.kills == 4
    assert report.runs_lost == 0, report
    assert report.nodes_doubled == 0, report
    assert report.joins_doubled == 0, report
    assert report.order_violations == 0, report
