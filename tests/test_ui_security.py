"""The dashboard safe by default, proven with real HTTP requests on loopback against the
real Tornado server, the session's Redis and an in-process worker: the Host and Origin
of a request (DNS rebinding), a stored graph that inflates without end, an exposed
address without credentials, slow and half-open clients, body and header limits,
credentials in any script and the delay after wrong ones, and the edge of the API
(NaN, objects where strings belong, corrupt run records)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import threading
import time
import tracemalloc
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from celery_graph import GraphRun
from celery_graph.errors import GraphTooLarge, UsageError
from celery_graph.state import state_for
from celery_graph.state.graphs import GraphStore
from celery_graph.ui import Limits, LoginThrottle, Server, start
from celery_graph.ui.__main__ import main
from tests.support.helpers import wait_for
from tests.ui_tasks import ETL, FLOWS, ui_echo, ui_never

EVIL = "rebind.evil.example"


class Response:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1]) if lines and lines[0] else 0
        self.headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
        }

    def json(self) -> dict:
        return json.loads(self.body)


def http(
    server: Server,
    method: str,
    path: str,
    *,
    host: str | None = None,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    auth: str | None = None,
    source: str = "127.0.0.1",
    timeout: float = 30,
) -> Response:
    """One request on its own connection (``Connection: close``), every header as given
    (``host``: the Host header, by default the server's own address)."""
    hdrs = {"Host": host or f"127.0.0.1:{server.port}", "Connection": "close"}
    if auth is not None:
        hdrs["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    if body is not None:
        hdrs["Content-Length"] = str(len(body))
    hdrs.update(headers or {})
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    with socket.create_connection(("127.0.0.1", server.port), timeout, (source, 0)) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n" + (body or b""))
        return Response(read_all(sock))


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def read_all_until_reset(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except OSError:
        pass
    return b"".join(chunks)


def post_json(server: Server, path: str, data: object = None, **kw) -> Response:
    headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
    raw = data if isinstance(data, bytes) else json.dumps(data or {}).encode()
    return http(server, "POST", path, headers=headers, body=raw, **kw)


@pytest.fixture()
def dash(app) -> Iterator[Server]:
    server = start(app, flows=FLOWS)
    try:
        yield server
    finally:
        server.stop()


def run_status(app, run_id: str) -> str:
    return state_for(app).runs.record(run_id)["status"]


# -- DNS rebinding: the Host and the Origin ------------------------------------------------


def test_a_request_sent_to_another_name_is_refused_and_cancels_nothing(app, dash):
    run = ui_never.as_graph().apply_async()
    try:
        # a page of rebind.evil.example whose name now resolves to 127.0.0.1
        page = http(dash, "GET", "/api/runs", host=f"{EVIL}:{dash.port}")
        assert page.status == 403, page.raw
        assert f"--allowed-host {EVIL}" in page.json()["error"]
        assert run.id.encode() not in page.body
        for path in ("/", "/static/app.js", f"/api/runs/{run.id}", "/api/nowhere"):
            assert http(dash, "GET", path, host=EVIL).status == 403, path
        cancel = post_json(
            dash,
            f"/api/runs/{run.id}/cancel",
            host=f"{EVIL}:{dash.port}",
            headers={"Origin": f"http://{EVIL}:{dash.port}"},
        )
        assert cancel.status == 403, cancel.raw
        assert run_status(app, run.id) == "running"

        # loopback names are the dashboard's own; probes may name any address
        for name in (f"127.0.0.1:{dash.port}", f"localhost:{dash.port}", "LOCALHOST."):
            assert http(dash, "GET", "/api/info", host=name).status == 200, name
        assert http(dash, "GET", "/healthz", host="10.1.2.3:5580").status == 200
    finally:
        run.cancel()


def test_an_allowed_host_is_served_and_an_action_must_come_from_an_allowed_origin(app):
    server = start(app, flows=FLOWS, allowed_hosts=["dash.example.com, ops.example.com"])
    run = ui_never.as_graph().apply_async()
    try:
        assert http(server, "GET", "/api/info", host="dash.example.com").status == 200
        assert http(server, "GET", "/api/info", host="OPS.example.com:443").status == 200
        assert http(server, "GET", "/api/info", host="example.com").status == 403
        path = f"/api/runs/{run.id}/cancel"
        for origin in (f"http://{EVIL}", "http://localhost:9999", "null", "file://"):
            refused = post_json(server, path, headers={"Origin": origin})
            assert refused.status == 403, (origin, refused.raw)
        assert run_status(app, run.id) == "running"
        # a proxy for dash.example.com that sends the dashboard its own address as Host
        done = post_json(server, path, headers={"Origin": "https://dash.example.com"})
        assert done.status == 200, done.raw
        assert done.json()["state"] == "cancelled"
    finally:
        server.stop()
        run.cancel()
    with pytest.raises(UsageError, match="--allowed-host 'http://dash'"):
        start(app, allowed_hosts=["http://dash"])


def test_the_command_takes_allowed_hosts_from_the_option_and_the_environment(
    celery_app, capsys, monkeypatch
):
    monkeypatch.setenv("CELERY_GRAPH_UI_ALLOWED_HOSTS", "dash.example.com,bad/host")
    assert main(["--port", "0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--allowed-host 'bad/host'" in err[0], err


# -- a graph that inflates without end -------------------------------------------------------


def zlib_bomb(megabytes: int) -> bytes:
    """``megabytes`` MiB of zeros, compressed (about a thousandth of that)."""
    deflate = zlib.compressobj(9)
    block = bytes(1 << 20)
    return b"".join(deflate.compress(block) for _ in range(megabytes)) + deflate.flush()


def test_a_graph_bomb_named_by_a_run_record_is_refused_unread(app, dash, rclient):
    state = state_for(app)
    bomb = zlib_bomb(256)  # 256 MiB once inflated
    assert len(bomb) < 1 << 20
    graph_id = hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    run_id = uuid.uuid4().hex
    now = state.runs.time()
    rclient.set(state.keys.graph(graph_id), bomb, ex=120)
    rclient.hset(
        state.keys.run(run_id),
        mapping={"status": "running", "graph": graph_id, "created": repr(now), "nodes": "1"},
    )
    rclient.expire(state.keys.run(run_id), 120)
    limit = state.settings.max_graph_bytes
    tracemalloc.start()
    try:
        answer = http(dash, "GET", f"/api/runs/{run_id}")
        graph = http(dash, "GET", f"/api/runs/{run_id}/graph")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answer.status == 500, answer.raw
    error = answer.json()["error"]
    assert graph_id in error and f"graph_max_graph_bytes ({limit} bytes)" in error, error
    assert graph.status == 500 and graph_id in graph.json()["error"]
    assert peak < 1.2 * limit, f"{peak >> 20} MiB allocated"  # not the 256 MiB inflated
    with pytest.raises(GraphTooLarge, match="once decompressed"):
        state.graphs.load(graph_id)


def test_a_stored_graph_over_the_limit_is_neither_read_nor_written(app, rclient):
    state = state_for(app)
    small = GraphStore(state.client, state.keys, ttl=60, cache_size=4, max_bytes=1000)
    graph_id = hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    rclient.set(state.keys.graph(graph_id), zlib.compress(os.urandom(5000)), ex=60)
    with pytest.raises(GraphTooLarge, match=r"larger than graph_max_graph_bytes \(1000 bytes\) in"):
        small.load(graph_id)
    spec = ETL.compile()
    rclient.delete(state.keys.graph(spec.graph_id))
    with pytest.raises(GraphTooLarge, match=rf"graph {spec.graph_id} is \d+ bytes of JSON"):
        GraphStore(state.client, state.keys, ttl=60, cache_size=4, max_bytes=100).put(spec)
    assert not rclient.exists(state.keys.graph(spec.graph_id))


# -- an exposed address needs credentials, or --no-auth --------------------------------------


def test_an_exposed_address_without_credentials_is_refused_unless_no_auth(app, capsys):
    assert main(["--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("celery-graph: error: --host 0.0.0.0 "), err
    assert "--basic-auth" in err[0] and "--no-auth" in err[0]
    assert main(["--no-auth", "--basic-auth", "admin:s3cret"]) == 2
    assert "contradict" in capsys.readouterr().err
    with pytest.raises(UsageError, match="--no-auth"):
        start(app, host="0.0.0.0")

    open_on_purpose = start(app, host="0.0.0.0", no_auth=True)
    try:
        assert http(open_on_purpose, "GET", "/api/info").status == 200
    finally:
        open_on_purpose.stop()
    with_auth = start(app, host="0.0.0.0", basic_auth="admin:s3cret")
    try:
        assert http(with_auth, "GET", "/api/info").status == 401
        assert http(with_auth, "GET", "/api/info", auth="admin:s3cret").status == 200
    finally:
        with_auth.stop()


# -- slow clients, big heads and bodies ------------------------------------------------------


def test_a_body_over_the_limit_is_refused_with_413_before_it_is_read(app, dash):
    limit = Limits().max_body_bytes
    path = "/api/flows/ui-echo/runs"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{dash.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {100 * limit}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", dash.port), 10) as sock:
        sock.sendall(head)  # and never the body
        answer = read_all(sock)  # the server answers, then closes
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    assert Response(answer).status == 413, answer
    assert f"larger than {limit} bytes" in Response(answer).json()["error"]

    # chunked: refused once the chunks pass the limit
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{dash.port}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"%x\r\n%s\r\n" % (64 << 10, b" " * (64 << 10))
    with socket.create_connection(("127.0.0.1", dash.port), 10) as sock:
        received: list[bytes] = []
        reader = threading.Thread(target=lambda: received.append(read_all_until_reset(sock)))
        reader.start()
        sock.sendall(head)
        with pytest.raises(OSError):  # the server closes the connection mid-upload
            for _ in range(100 * limit // (64 << 10)):
                sock.sendall(chunk)
        reader.join(10)
    (answer,) = received
    assert Response(answer).status == 413 and answer.count(b"HTTP/1.1 ") == 1, answer

    # a body within the limit is read as before
    ok = post_json(dash, path, {"inputs": {"x": "y" * (limit // 2)}})
    assert ok.status == 201, ok.raw


def test_a_head_over_the_limit_closes_the_connection(dash):
    big = "x" * (Limits().max_header_bytes * 3 // 2)  # (Tornado's own limit is 64 KiB)
    with socket.create_connection(("127.0.0.1", dash.port), 10) as sock:
        sock.sendall(f"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {big}\r\n\r\n".encode())
        try:
            answer = read_all(sock)
        except ConnectionResetError:  # closed with the head unread
            answer = b""
    assert b"200 OK" not in answer, answer[:200]
    assert http(dash, "GET", "/api/info").status == 200


def closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_half_open_connections_cannot_lock_people_out(app):
    limits = Limits(max_connections=20, header_timeout=1.5)
    server = start(app, flows=FLOWS, limits=limits)
    idle = [socket.create_connection(("127.0.0.1", server.port), 10) for _ in range(60)]
    try:
        # someone who sends a request is served at once: the oldest idle sockets made room
        t0 = time.monotonic()
        answer = http(server, "GET", "/api/info")
        assert answer.status == 200 and time.monotonic() - t0 < 1.0
        assert server.http.open_connections <= limits.max_connections + 1
        evicted = wait_for(
            lambda: (n := sum(map(closed_by_server, idle))) >= 40 and n, 5, "40 sockets closed"
        )
        assert evicted >= 40
        # a head that trickles in is cut off at the header timeout, like a silent one
        drip = socket.create_connection(("127.0.0.1", server.port), 10)
        drip.sendall(b"GET /api/info HTTP/1.1\r\n")
        t0 = time.monotonic()
        while not closed_by_server(drip) and time.monotonic() - t0 < 10:
            drip.setblocking(True)
            drip.sendall(b"X: y\r\n")
            time.sleep(0.2)
        assert 1.0 < time.monotonic() - t0 < limits.header_timeout + 2
        wait_for(lambda: all(map(closed_by_server, idle)), 10, "every idle socket closed")
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_the_default_limits_are_bounded(dash):
    limits = dash.http.limits
    assert limits == Limits()
    assert limits.header_timeout <= 30 and limits.body_timeout <= 60
    assert limits.max_connections <= 1000 and limits.max_header_bytes <= 64 * 1024
    assert limits.max_body_bytes <= 2 << 20


# -- credentials ------------------------------------------------------------------------------


def test_credentials_in_any_script_are_compared_as_bytes(app):
    server = start(app, basic_auth="admin:pässwörd,ops:s3cret")
    try:
        assert http(server, "GET", "/api/info", auth="admin:pässwörd").status == 200
        assert http(server, "GET", "/api/info", auth="ops:s3cret").status == 200
        for wrong in ("admin:passwörd", "ops:s3crét", "ädmin:pässwörd", "ops:"):
            answer = http(server, "GET", "/api/info", auth=wrong, source="127.0.0.3")
            assert answer.status == 401, (wrong, answer.raw)
            assert answer.headers["www-authenticate"].startswith("Basic ")
            server.dash.throttle.succeeded("127.0.0.3")  # (no delays in this test)
        for header in ("Basic ü", "Basic !!!", "Bearer abc", "Basic " + "x" * 5):
            answer = http(server, "GET", "/api/info", headers={"Authorization": header})
            assert answer.status == 401, (header, answer.raw)
            server.dash.throttle.succeeded("127.0.0.1")
    finally:
        server.stop()


def test_wrong_passwords_are_slowed_per_client_without_holding_up_others(app):
    throttle = LoginThrottle(base=0.1, cap=0.4, max_wait=1.5)
    server = start(app, basic_auth="admin:s3cret", throttle=throttle)
    attacker = "127.0.0.2"
    try:
        # eight guesses in a row: 0 + 0.1 + 0.2 + 0.4 * 5 seconds of waiting
        t0 = time.monotonic()
        for i in range(8):
            answer = http(server, "GET", "/api/runs", auth=f"admin:guess{i}", source=attacker)
            assert answer.status == 401
        assert time.monotonic() - t0 >= 2.0

        # guesses sent at once queue up; past max_wait they are refused unchecked
        with ThreadPoolExecutor(30) as pool:
            statuses = list(
                pool.map(
                    lambda i: (
                        http(server, "GET", "/api/runs", auth=f"admin:x{i}", source=attacker).status
                    ),
                    range(30),
                )
            )
        assert statuses.count(429) >= 20 and statuses.count(401) <= 6, statuses

        # meanwhile another client is not held up, and a right password from the
        # guessing client waits its turn (at most the cap), then clears its record
        answered: list[float] = []

        def guess_again() -> None:  # waits about the cap (0.4 s) before its answer
            http(server, "GET", "/api/runs", auth="admin:nope", source=attacker)
            answered.append(time.monotonic())

        turn = throttle._seen[attacker].next
        waiting = threading.Thread(target=guess_again)
        waiting.start()
        # the guess has taken its turn: it waits in the server now
        wait_for(lambda: throttle._seen[attacker].next > turn, 5, "the guess to wait its turn")
        t0 = time.monotonic()
        assert http(server, "GET", "/api/info", auth="admin:s3cret").status == 200
        other = time.monotonic()
        waiting.join()
        # answered while the guess still waited (compared, not timed: a loaded machine
        # slows both, a client held up behind the guess comes after it)
        assert answered and other < answered[0], (other - t0, answered[0] - t0)
        wait_for(
            lambda: (
                http(server, "GET", "/api/info", auth="admin:s3cret", source=attacker).status == 200
            ),
            10,
            "the right password to be let in",
        )
        t0 = time.monotonic()
        assert http(server, "GET", "/api/info", auth="admin:s3cret", source=attacker).status == 200
        assert time.monotonic() - t0 < 0.3
        # asking without credentials (a browser's first request) is no failure
        for _ in range(5):
            assert http(server, "GET", "/api/info", source="127.0.0.4").status == 401
        t0 = time.monotonic()
        assert (
            http(server, "GET", "/api/info", auth="admin:s3cret", source="127.0.0.4").status == 200
        )
        assert time.monotonic() - t0 < 0.3
    finally:
        server.stop()


# -- the edge of the API ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, words",
    [
        (b'{"inputs": {"x": 1}, "deadline": NaN}', "NaN is not JSON"),
        (b'{"inputs": {"x": 1}, "deadline": Infinity}', "Infinity is not JSON"),
        (b'{"inputs": {"x": 1}, "deadline": 1e999}', "deadline must be a positive number"),
        (b'{"inputs": {"x": 1}, "deadline": true}', "deadline must be a positive number"),
        (b'{"inputs": {"x": 1}, "idempotency_key": {"a": 1}}', "idempotency_key must be a"),
        (b'{"inputs": {"x": 1}, "idempotency_key": 7}', "idempotency_key must be a"),
        (b'{"inputs": {"x": 1}, "idempotencyKey": "k"}', "unknown field(s) idempotencyKey"),
    ],
)
def test_a_start_with_a_malformed_field_is_refused_before_anything_is_sent(app, dash, body, words):
    before = state_for(app).index.count(state_for(app).index.flow_key("ui-echo"), 0, 1e12)
    answer = post_json(dash, "/api/flows/ui-echo/runs", body)
    assert answer.status == 400, answer.raw
    assert words in answer.json()["error"]
    assert state_for(app).index.count(state_for(app).index.flow_key("ui-echo"), 0, 1e12) == before


def test_inputs_over_the_limit_are_refused_with_413_naming_the_setting(app, dash, monkeypatch):
    monkeypatch.setenv("CELERY_GRAPH_MAX_INPUT_BYTES", "1000")
    answer = post_json(dash, "/api/flows/ui-echo/runs", {"inputs": {"x": "y" * 2000}})
    assert answer.status == 413, answer.raw
    error = answer.json()["error"]
    assert "graph_max_input_bytes (1000)" in error and re.search(r"are 20\d\d bytes", error)


@pytest.mark.parametrize(
    "field, value, alone",
    [
        ("created", "abc", 500),
        ("finished", "soon", 500),
        ("created", "nan", 500),
        ("nodes", "x", 200),
    ],
)
def test_a_corrupt_run_record_is_left_out_of_the_list_and_a_server_error_alone(
    app, dash, rclient, field, value, alone
):
    good = ETL.apply_async(n=1)
    good.get(timeout=20)
    state = state_for(app)
    bad = uuid.uuid4().hex
    record = {k.decode(): v for k, v in rclient.hgetall(state.keys.run(good.id)).items()}
    record[field] = value
    rclient.hset(state.keys.run(bad), mapping=record)
    rclient.expire(state.keys.run(bad), 120)
    rclient.zadd(state.keys.runs_index(), {bad: state.runs.time()})
    try:
        listing = http(dash, "GET", "/api/runs?limit=100")
        assert listing.status == 200, listing.raw
        page = listing.json()
        ids = [r["run_id"] for r in page["runs"]]
        assert good.id in ids and bad not in ids
        (flagged,) = page["corrupt"]
        assert flagged["run_id"] == bad and repr(field) in flagged["problem"]
        assert any("do not parse" in note for note in page["notes"])
        found = http(dash, "GET", f"/api/runs?q={bad}").json()
        assert found["runs"] == [] and found["corrupt"][0]["run_id"] == bad

        answer = http(dash, "GET", f"/api/runs/{bad}")  # (the run's page reads no "nodes")
        assert answer.status == alone, answer.raw
        if alone == 500:
            error = answer.json()["error"]
            assert f"run {bad}" in error and repr(field) in error, error
    finally:
        rclient.zrem(state.keys.runs_index(), bad)
        rclient.delete(state.keys.run(bad))


def test_the_echo_flow_still_starts_from_the_page(app, dash):
    """The checks above leave a well-formed start alone (and echo is what they try)."""
    answer = post_json(dash, "/api/flows/ui-echo/runs", {"inputs": {"x": 3}, "deadline": 60})
    assert answer.status == 201, answer.raw
    assert GraphRun(answer.json()["run_id"], app=app).get(timeout=20) == ui_echo(3)
