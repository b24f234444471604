"""Graph tasks and flows for the dashboard's tests.

``ui_gate`` blocks until the test releases it (a token pushed to a Redis list), so a test
can hold a node in the running state, look at it, and let it finish: no sleeps."""

from __future__ import annotations

import os

from celery_graph import task
from tests.tasks import audit, extract, load, trace_client, transform

GATE_TIMEOUT = 30.0


def gate_key(key: str) -> str:
    return f"cgtest-gate:{key}"


@task
def ui_gate(key: str, name: str = "gate"):
    trace_client().blpop([gate_key(key)], timeout=GATE_TIMEOUT)
    return name


@task
def ui_boom(tag=None):
    raise ValueError("ui_boom went the node")


@task
def ui_after(ui_boom=None):
    return "after"


@task
def ui_fail_once(key: str):
    """Fails the first time it runs for ``key``, succeeds after."""
    if trace_client().incr(f"cgtest-count:{key}:ui_fail_once") == 1:
        raise RuntimeError("first attempt fails")
    return "second attempt"


@task
def ui_echo(x, factor: int = 2):
    return {"x": x, "times": x * factor if isinstance(x, int) else x}


@task
def ui_items(n: int = 3):
    return list(range(n))


@task
def ui_square(ui_items):
    return ui_items * ui_items


@task
def ui_total(ui_square):
    return sum(ui_square)


ETL = extract >> (transform | audit) >> load
BOOM = ui_boom >> ui_after
ECHO = ui_echo
MAPPED = ui_items >> ui_square.map("ui_items") >> ui_total


def gated(key: str):
    """g1 >> (g2 | quick | items >> square.map >> total) >> done: g1 and g2 wait for a
    token each on ``key``; done is a join of three."""
    return (
        ui_gate.bind(id="g1", key=key, name="g1")
        >> (
            ui_gate.bind(id="g2", key=key, name="g2")
            | ui_echo.bind(id="quick", x=1)
            | ui_items >> ui_square.map("ui_items") >> ui_total
        )
        >> ui_echo.bind(id="done", x=2)
    )


FLOWS = {"ui-etl": ETL, "ui-boom": BOOM, "ui-echo": ECHO, "ui-mapped": MAPPED}


NOBODY_QUEUE = f"cgtest-ui-nobody-{os.environ.get('CGTEST_SESSION', 'local')}"


@task(queue=NOBODY_QUEUE)
def ui_never():
    return "no worker consumes this queue"
