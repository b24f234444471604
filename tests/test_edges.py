"""Bad input meets one clear error at the edge, with real parts: submissions (a deadline
that is not a number, a key that is not a string, inputs over the limit) are refused
before anything is sent; a node message whose ``_graph`` fields are malformed is logged in
one line and rejected, never run or requeued, by a real worker; a command the graph
Redis's ACL refuses reaches the command line as one line."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from celery_graph.errors import InputTooLarge, MalformedMessage, StorePermissionDenied
from celery_graph.protocol import NodeMessage
from celery_graph.state import state_for
from celery_graph.state.connection import translated
from tests.support.helpers import wait_for
from tests.support.processes import base_env, cli
from tests.tasks import needs_input, read_trace, step, trace_client
from tests.ui_tasks import ETL

GRAPH = "a" * 64
RUN = "b" * 32


# -- submissions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, error, words",
    [
        ({"deadline": float("nan")}, ValueError, "deadline must be a positive number"),
        ({"deadline": float("inf")}, ValueError, "deadline must be a positive number"),
        ({"deadline": -1}, ValueError, "deadline must be a positive number"),
        ({"deadline": "60"}, TypeError, "deadline must be a number of seconds, got a str"),
        ({"deadline": True}, TypeError, "got a bool"),
        ({"idempotency_key": {"a": 1}}, TypeError, "idempotency_key must be a string, got a dict"),
        ({"idempotency_key": 7}, TypeError, "idempotency_key must be a string, got a int"),
    ],
)
def test_a_malformed_deadline_or_key_is_refused_before_anything_is_sent(
    app, published, options, error, words
):
    runs = state_for(app).index.count(state_for(app).index.runs_key(), 0, 1e12)
    with pytest.raises(error, match=words):
        needs_input.as_graph().apply_async(x=1, **options)
    assert published == []
    assert state_for(app).index.count(state_for(app).index.runs_key(), 0, 1e12) == runs


def test_inputs_over_the_limit_are_refused_naming_the_size_and_the_setting(
    app, published, monkeypatch
):
    monkeypatch.setenv("CELERY_GRAPH_MAX_INPUT_BYTES", "1000")
    with pytest.raises(InputTooLarge, match=r"are 10\d\d bytes encoded, over graph_max_input"):
        needs_input.as_graph().apply_async(x="y" * 1000)
    assert published == []
    assert needs_input.as_graph().apply_async(x="y" * 900).get(timeout=20) == "y" * 900


# -- node messages ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, words",
    [
        ("not an object", "_graph is a str, not an object of graph fields"),
        ({"g": GRAPH, "n": "x"}, "_graph['r'], a run id (32 hex digits), is missing"),
        ({"g": 7, "r": RUN, "n": "x"}, "_graph['g'] should be a graph id (64 hex digits), got 7"),
        ({"g": GRAPH, "r": RUN, "n": ["x"]}, "_graph['n'] should be a node id, got ['x']"),
        ({"g": GRAPH, "r": RUN, "n": "x", "i": "3", "c": 5}, "_graph['i'] should be an item"),
        ({"g": GRAPH, "r": RUN, "n": "x", "i": 5, "c": 5}, "an item index below an item count"),
        ({"g": GRAPH, "r": RUN, "n": "x", "i": 1}, "an item index below an item count"),
        ({"g": GRAPH, "r": RUN, "n": "x", "x": True}, "_graph['x'] should be a resend count"),
        ({"g": GRAPH, "r": RUN, "n": "x", "f": {}}, "_graph['f'] should be an error record"),
    ],
)
def test_malformed_graph_fields_are_one_error_naming_the_field(fields, words):
    with pytest.raises(MalformedMessage) as raised:
        NodeMessage.parse(fields)
    assert words in str(raised.value)


def test_well_formed_fields_parse_as_before():
    message = NodeMessage(GRAPH, RUN, "n", "proj.t", 3, 10, 100, 2, '{"type": "E"}')
    assert NodeMessage.parse(message.fields()) == message
    assert NodeMessage.parse({"g": GRAPH, "r": RUN, "n": "n"}) == NodeMessage(GRAPH, RUN, "n")


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture()
def graph_log() -> Iterator[Records]:
    records = Records()
    # the executor logs as a Celery task logger (celery_graph.task, a child of Celery's
    # task logger, so it keeps Celery's task format): it does not reach "celery_graph"
    loggers = [logging.getLogger("celery_graph"), logging.getLogger("celery_graph.task")]
    for logger in loggers:
        logger.addHandler(records)
    try:
        yield records
    finally:
        for logger in loggers:
            logger.removeHandler(records)


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"g": GRAPH, "n": "m"}, "_graph['r']"),
        ({"g": GRAPH, "r": RUN, "n": "m", "i": "0", "c": 2}, "_graph['i']"),
        ("junk", "_graph is a str"),
    ],
)
def test_a_worker_rejects_a_malformed_node_message_in_one_line_without_running_it(
    app, tag, graph_log, fields, field
):
    task_id = f"malformed-{tag}"
    app.send_task(
        step.celery_task.name, kwargs={"tag": tag, "name": "m", "_graph": fields}, task_id=task_id
    )
    (line,) = wait_for(
        lambda: [r for r in graph_log.records if task_id in r.getMessage()],
        10,
        "the worker to reject the message",
    )
    assert line.levelno == logging.ERROR and line.exc_info is None
    assert f"rejected {task_id} without requeue, a malformed node message" in line.getMessage()
    assert field in line.getMessage()
    broker = trace_client()
    queue = app.conf.task_default_queue

    def gone() -> bool:  # neither waiting in the queue nor held unacknowledged
        waiting = b"".join(broker.lrange(queue, 0, -1))
        held = b"".join(broker.hvals("unacked"))
        return task_id.encode() not in waiting + held

    wait_for(gone, 10, "the message to leave the broker")
    assert read_trace(tag) == []  # the function never ran
    others = [r for r in graph_log.records if r is not line and task_id in r.getMessage()]
    assert others == []  # and nothing else said anything about it


def test_the_messages_of_a_run_still_run(app, tag):
    """The check leaves the messages celery-graph sends alone (tests/test_map.py runs
    items and chunks)."""
    run = (step.bind(id="one", name="one") >> ETL).apply_async(tag=tag)
    assert run.get(timeout=20) == {"rows": [10, 20, 30], "count": 3}
    assert read_trace(tag) == ["start:one", "end:one"]


# -- the graph Redis's ACL --------------------------------------------------------------


@pytest.fixture()
def limited_url(redis_url, rclient) -> Iterator[str]:
    """A URL of the test Redis for a user that may touch no key of the tests."""
    if os.environ.get("CELERY_GRAPH_TEST_REDIS_URL"):
        pytest.skip("the ACL test changes users: it runs only on the tests' private Redis")
    user, password = f"cgtest-acl-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    rclient.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~elsewhere:*", "+@all")
    parts = urlsplit(redis_url)
    netloc = f"{user}:{password}@{parts.hostname}:{parts.port}"
    try:
        yield urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    finally:
        rclient.execute_command("ACL", "DELUSER", user)


def test_a_command_the_acl_refuses_is_one_line_saying_what_to_do(app, limited_url):
    run = ETL.apply_async(n=2)
    run.get(timeout=20)
    prefix = state_for(app).keys.prefix
    out = cli("status", run.id, env=base_env(limited_url, CELERY_GRAPH_KEY_PREFIX=prefix))
    err = out.stderr.splitlines()
    assert out.returncode == 2, out.stderr
    assert len(err) == 1 and err[0].startswith("celery-graph: error: the graph Redis refused"), err
    assert "no permissions" in err[0] and "ACL SETUSER" in err[0]


def test_the_state_boundary_translates_a_refused_command(limited_url):
    client = redis.Redis.from_url(limited_url)
    with pytest.raises(StorePermissionDenied, match=r"refused reading a key: .*no permissions"):
        translated("reading a key", lambda: client.get("cgtest:anything"))


def test_a_graph_the_acl_will_not_store_leaves_no_run_going(redis_url, rclient, tag):
    """A submission's graph goes in start.lua's round trip (state/runs.py create): a
    server that refuses that write (here its ACL: SET denied) while it creates the run
    gets the run ended failed and the refusal raised. The root's message, sent while the
    creation was on its way, finds the run failed: a worker runs nothing."""
    from celery_graph.client.submit import run_id_for
    from tests.support.apps import make_app

    if os.environ.get("CELERY_GRAPH_TEST_REDIS_URL"):
        pytest.skip("the ACL test changes users: it runs only on the tests' private Redis")
    user, password = f"cgtest-acl-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    rclient.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "+@all", "-set")
    parts = urlsplit(redis_url)
    netloc = f"{user}:{password}@{parts.hostname}:{parts.port}"
    admin = make_app(redis_url, session=f"acl-{tag}")
    limited = make_app(redis_url, session=f"acl-{tag}")
    limited.conf.graph_redis_url = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    try:
        with pytest.raises(StorePermissionDenied, match="no permissions"):
            step.bind(id="one", name="one").submit(app=limited, idempotency_key=tag)
    finally:
        rclient.execute_command("ACL", "DELUSER", user)
    state = state_for(admin)
    record = state.runs.record(run_id_for(tag))
    assert record["status"] == "failed" and "storing its graph failed" in record["error"]
    assert rclient.llen(f"cgtest-acl-{tag}") <= 1  # the root, sent ahead, at most
    rclient.delete(f"cgtest-acl-{tag}")
    # what the root's begin.lua answers a worker: the run's status, nothing begun
    assert state.scripts.begin(run_id_for(tag), "one", "test@here", []).status == "failed"
