"""A small chaos check in the suite; `python -m tests.chaos` runs a bigger one."""

from __future__ import annotations

import pytest

from tests.support.chaos import run_chaos

pytestmark = pytest.mark.slow  # kills worker subprocesses and restarts Redis servers


@pytest.mark.timeout(300)  # above run_chaos's own wait, so a stuck run is reported
def test_kills_a_lost_broker_and_a_graph_redis_restart_lose_no_run_and_double_nothing(
    redis_url,
):
    report = run_chaos(
        redis_url,
        runs=20,
        kills=3,
        workers=3,
        broker_restarts=1,
        graph_restarts=1,
        lease=2.0,
        seed=7,
    )
    assert report.kills == 3
    assert report.runs_lost == 0, "\n".join([repr(report), *report.stuck])
    assert report.wrong_results == 0, report
    assert report.nodes_doubled == 0, "\n".join([repr(report), *report.suspect])
    assert report.joins_doubled == 0, report
    assert report.order_violations == 0, "\n".join([repr(report), *report.suspect])
