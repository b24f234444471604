"""Fixtures of the dashboard's tests, loaded with ``pytest_plugins =
("tests.support.ui_fixtures",)``: the dashboard served from a thread on the session's app
(a real worker behind it), its HTTP client, and gates that hold nodes running."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celery_graph.ui import Server, start
from tests.support.ui import FLOWER, Gates, Http, gate_key
from tests.ui_tasks import FLOWS


@pytest.fixture(scope="module")
def ui(celery_app: Celery, worker: object) -> Iterator[Server]:
    """The dashboard of the session's app (a worker consumes its queue)."""
    celery_app.set_current()
    server = start(celery_app, flows=FLOWS, flower_url=FLOWER)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def http(ui: Server) -> Http:
    return Http(ui.url.rstrip("/"))


@pytest.fixture()
def gates(rclient: Any, tag: str) -> Iterator[Gates]:
    g = Gates(rclient, tag)
    try:
        yield g
    finally:
        g.release(4)
        rclient.expire(gate_key(tag), 60)
