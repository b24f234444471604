"""The trigger API: ``POST /api/flows/<name>/runs`` with a bearer token, from another
system (docs/trigger-api.md). Real dashboard, real worker, real HTTP."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from celery_graph import GraphRun
from celery_graph.client.submit import run_id_for
from celery_graph.errors import UsageError
from celery_graph.ui import Server, start
from celery_graph.ui.tokens import ApiTokens
from tests.support.ui import Http
from tests.ui_tasks import FLOWS

OPEN = secrets.token_urlsafe(32)  # may start every flow
ECHO_ONLY = secrets.token_urlsafe(32)  # may start ui-echo only


@pytest.fixture(scope="module")
def dashboard(celery_app, worker, tmp_path_factory) -> Iterator[Server]:
    tokens_file = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    tokens_file.write_text(f"# the CI job\n{ECHO_ONLY} ui-echo\n\n")
    celery_app.set_current()
    tokens = ApiTokens.parse([OPEN], [str(tokens_file)])
    server = start(celery_app, flows=FLOWS, basic_auth="admin:s3cret", api_tokens=tokens)
    try:
        yield server
    finally:
        server.stop()


def post(server: Server, path: str, body: object, token: str | None, **headers: str):
    hdrs = dict(headers)
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    return Http(server.url.rstrip("/")).request("POST", path, body, hdrs)


def test_a_token_starts_a_run_and_the_idempotency_key_header_starts_it_once(app, dashboard, tag):
    key = f"webhook-{tag}"
    status, body = post(
        dashboard, "/api/flows/ui-echo/runs", {"inputs": {"x": 4}}, OPEN, **{"Idempotency-Key": key}
    )
    assert status == 201, body
    assert body == {"run_id": run_id_for(key), "flow": "ui-echo"}
    again = post(
        dashboard, "/api/flows/ui-echo/runs", {"inputs": {"x": 4}}, OPEN, **{"Idempotency-Key": key}
    )
    assert again == (201, body)
    assert GraphRun(body["run_id"], app=app).get(timeout=30) == {"x": 4, "times": 8}
    status, err = post(
        dashboard,
        "/api/flows/ui-echo/runs",
        {"inputs": {"x": 4}, "idempotency_key": "other"},
        OPEN,
        **{"Idempotency-Key": key},
    )
    assert status == 400 and "differ" in err["error"]


def test_a_token_limited_to_some_flows_starts_only_those(app, dashboard):
    status, body = post(dashboard, "/api/flows/ui-echo/runs", {"inputs": {"x": 1}}, ECHO_ONLY)
    assert status == 201, body
    status, body = post(dashboard, "/api/flows/ui-etl/runs", {}, ECHO_ONLY)
    assert status == 403 and "may not start flow 'ui-etl'" in body["error"]


@pytest.mark.parametrize(
    ("method", "path", "token", "status", "words"),
    [
        (
            "POST",
            "/api/flows/ui-echo/runs",
            "not-a-token-at-all-xxxxxxxxx",
            401,
            "unknown API token",
        ),
        ("GET", "/api/runs", OPEN, 403, "only starts runs"),
        ("POST", f"/api/runs/{'a' * 32}/cancel", OPEN, 403, "only starts runs"),
        ("GET", "/", OPEN, 403, "only starts runs"),
    ],
    # the random tokens stay out of the test ids: each pytest-xdist worker draws its own,
    # and the workers must collect the same ids
    ids=lambda value: (
        {OPEN: "open-token", ECHO_ONLY: "echo-only-token"}.get(value)
        if isinstance(value, str)
        else None
    ),
)
def test_a_token_opens_nothing_but_the_trigger(dashboard, method, path, token, status, words):
    got, body = Http(dashboard.url.rstrip("/")).request(
        method, path, {} if method == "POST" else None, {"Authorization": f"Bearer {token}"}
    )
    assert got == status and words in body["error"], body


def test_without_a_token_the_page_credentials_are_asked_and_a_token_needs_json(dashboard):
    assert post(dashboard, "/api/flows/ui-echo/runs", {"inputs": {"x": 1}}, None)[0] == 401
    status, _ = post(
        dashboard,
        "/api/flows/ui-echo/runs",
        {"inputs": {"x": 1}},
        OPEN,
        **{"Content-Type": "text/plain"},
    )
    assert status == 415


def test_a_dashboard_without_tokens_refuses_bearer_tokens(app):
    server = start(app, flows=FLOWS)
    try:
        status, body = post(server, "/api/flows/ui-echo/runs", {}, OPEN)
        assert status == 401 and "--api-token" in body["error"]
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("values", "words"),
    [
        (["short"], "--api-token #1: an API token is at least 24 characters"),
        ([f"{OPEN} x"], "without spaces"),
    ],
)
def test_bad_tokens_are_refused_when_the_dashboard_starts(values, words):
    with pytest.raises(UsageError, match=words):
        ApiTokens.parse(values)
    with pytest.raises(UsageError, match="--api-tokens-file /nonexistent"):
        ApiTokens.parse([], ["/nonexistent"])


def test_the_documented_curl_example_starts_a_run(app, dashboard, tag):
    """docs/trigger-api.md's curl command, run as written against the test dashboard."""
    key = f"curl-{tag}"
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-X",
            "POST",
            dashboard.url.rstrip("/") + "/api/flows/ui-echo/runs",
            "-H",
            f"Authorization: Bearer {OPEN}",
            "-H",
            "Content-Type: application/json",
            "-H",
            f"Idempotency-Key: {key}",
            "-d",
            '{"inputs": {"x": 21}}',
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"run_id": run_id_for(key), "flow": "ui-echo"}
    assert GraphRun(run_id_for(key), app=app).get(timeout=30) == {"x": 21, "times": 42}
