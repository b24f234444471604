"""The dashboard's web server: the pages, the JSON API, basic auth, on Tornado.

Tornado is the one dependency (``pip install 'celery-graph[ui]'``); this module imports
without it and ``serve()`` says what to install. Redis calls block, so every request's
work runs in a small thread pool and never holds up the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import IO, Any
from urllib.parse import unquote

from ..dsl import Flow
from ..errors import (
    Backpressure,
    CeleryGraphError,
    ConfigurationError,
    GraphDefinitionError,
    GraphNotFound,
    InputTooLarge,
    ResultTooLarge,
    RunNotFound,
    RunNotResumable,
    SerializationError,
    SignalRefused,
    StoreUnavailable,
    UsageError,
)
from ..state import state_for
from .connections import GuardedHTTPServer, Limits
from .errors import BadRequest, HttpError
from .flows import FlowRegistry
from .guard import Credentials, HostPolicy, LoginThrottle, check_exposure, exposed
from .listing import RunLister, RunQuery
from .tokens import ApiTokens
from .views import Encoded, Views

try:  # the [ui] extra
    from tornado import iostream, netutil, web
except ImportError:  # pragma: no cover - exercised by installs without the extra
    web = None  # type: ignore[assignment]

DEFAULT_PORT = 5580
logger = logging.getLogger("celery_graph.ui")
STATIC = resources.files(__package__) / "static"
PAGES = (r"/", r"/runs/[0-9a-f]{32}", r"/flows", r"/workers", r"/schedules")

_Base: Any = web.RequestHandler if web is not None else object


def require_tornado() -> None:
    if web is None:
        raise ConfigurationError("the dashboard needs Tornado: pip install 'celery-graph[ui]'")


def parse_basic_auth(value: str | None) -> Credentials:
    """``user:password`` pairs, comma separated (like Flower's ``--basic-auth``);
    UsageError naming what is wrong with a malformed one."""
    return Credentials(value)


def normalise_prefix(prefix: str | None) -> str:
    """``/dash`` style: a leading slash, no trailing one; "" for none."""
    prefix = (prefix or "").strip("/")
    if any(c in prefix for c in "?#\"'<> "):
        raise UsageError(f"--url-prefix {prefix!r}: use a plain path such as /celery-graph")
    return f"/{prefix}" if prefix else ""


@dataclass
class Refusal:
    """Why a request is not served: its status, a message, headers to send."""

    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)


# the trigger API's path, below the URL prefix
TRIGGER = re.compile(r"^/api/flows/([^/]+)/runs$")


def _bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    scheme, _, token = (header or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


ASK_FOR_CREDENTIALS = {"WWW-Authenticate": 'Basic realm="celery-graph", charset="UTF-8"'}


class Dashboard:
    """Everything a request needs, for one Celery app. ``host``: the address served on;
    a request must name it, loopback or one of ``allowed_hosts`` in its Host header."""

    def __init__(
        self,
        app: Any,
        *,
        flower_url: str | None = None,
        flows: Mapping[str, str | Flow] | None = None,
        basic_auth: str | None = None,
        url_prefix: str = "",
        workers: int = 8,
        host: str = "127.0.0.1",
        allowed_hosts: Iterable[str] = (),
        no_auth: bool = False,
        limits: Limits | None = None,
        throttle: LoginThrottle | None = None,
        api_tokens: ApiTokens | None = None,
    ) -> None:
        self.credentials = parse_basic_auth(basic_auth)
        self.tokens = api_tokens or ApiTokens()
        check_exposure(host, self.credentials, no_auth)
        self.hosts = HostPolicy(host, allowed_hosts)
        self.limits = limits or Limits()
        self.throttle = throttle or LoginThrottle()
        self.app = app
        self.state = state_for(app)
        self.registry = FlowRegistry(app, flows)
        self.views = Views(app, self.state, self.registry, flower_url)
        self.lister = RunLister(self.state.index, self.registry.name_of, by_graph=self.registry.get)
        self.prefix = normalise_prefix(url_prefix)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cg-ui")
        index = (STATIC / "index.html").read_text()
        self.index_html = index.replace("__BASE__", self.prefix + "/")

    async def admit(self, request: Any) -> Refusal | None:
        """Why ``request`` is not served (checked in this order: its Host, the size of its
        body, its credentials, the origin of an action), or None to serve it."""
        host = request.headers.get("Host")
        if not self.hosts.allows_host(host):
            return Refusal(403, self.hosts.refusal(host))
        length = request.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.limits.max_body_bytes:
            return too_large(self.limits)
        bearer = _bearer(request.headers.get("Authorization"))
        if bearer is not None and self.tokens.enabled:
            return await self._admit_bearer(request, bearer)
        if bearer is not None and not self.credentials.required:
            return Refusal(
                401, "API tokens are not accepted here: start the dashboard with --api-token"
            )
        if self.credentials.required:
            header = request.headers.get("Authorization")
            if not header:
                return Refusal(401, "authentication required (--basic-auth)", ASK_FOR_CREDENTIALS)
            client = request.remote_ip or "unknown"
            if not await self.throttle.admit(client):
                wait = str(self.throttle.retry_after(client))
                return Refusal(
                    429, "too many wrong passwords from this address: wait", {"Retry-After": wait}
                )
            if not self.credentials.check(header):
                self.throttle.failed(client)
                return Refusal(401, "wrong user or password", ASK_FOR_CREDENTIALS)
            self.throttle.succeeded(client)
        if request.method == "POST":
            return self._check_action(request)
        return None

    async def _admit_bearer(self, request: Any, presented: str) -> Refusal | None:
        """A request with a bearer token: the trigger API, and nothing else. Page
        credentials are not asked (the token is them) and neither is the same-origin
        check of the page's actions (a browser never sends a bearer token on its own)."""
        found = TRIGGER.match(request.path[len(self.prefix) :])
        if request.method != "POST" or found is None:
            return Refusal(403, "an API token only starts runs: POST /api/flows/<name>/runs")
        client = request.remote_ip or "unknown"
        if not await self.throttle.admit(client):
            wait = str(self.throttle.retry_after(client))
            return Refusal(
                429, "too many wrong tokens from this address: wait", {"Retry-After": wait}
            )
        token = self.tokens.match(presented)
        if token is None:
            self.throttle.failed(client)
            return Refusal(401, "unknown API token")
        self.throttle.succeeded(client)
        flow = unquote(found.group(1))
        if not token.allows(flow):
            return Refusal(403, f"this API token may not start flow {flow!r}")
        ctype = request.headers.get("Content-Type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            return Refusal(415, "send the run as JSON (Content-Type: application/json)")
        return None

    def _check_action(self, request: Any) -> Refusal | None:
        """Actions come from the dashboard's own page: JSON bodies, same origin. A form
        or a page on another site cannot send them with the user's credentials."""
        ctype = request.headers.get("Content-Type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            return Refusal(415, "send actions as JSON (Content-Type: application/json)")
        if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            return Refusal(403, "cross-site request refused")
        origin = request.headers.get("Origin")
        if origin and not self.hosts.allows_origin(origin, request.headers.get("Host")):
            return Refusal(403, f"request from origin {origin} refused")
        return None

    def application(self) -> Any:
        require_tornado()
        p = self.prefix
        api = f"{p}/api"
        run = r"([0-9a-f]{32})"
        node = r"([^/]+)"
        static: dict[str, Any] = {"path": str(STATIC)}
        routes: list[tuple[str, Any, dict[str, Any]]] = [
            (f"{p}/healthz", HealthHandler, {}),
            *((f"{p}{page}", PageHandler, {}) for page in PAGES),
            (f"{p}/static/(.*)", StaticHandler, static),
            (f"{api}/info", InfoHandler, {}),
            (f"{api}/runs", RunsHandler, {}),
            (f"{api}/runs/{run}", RunHandler, {}),
            (f"{api}/runs/{run}/graph", GraphHandler, {}),
            (f"{api}/runs/{run}/nodes/{node}", NodeHandler, {}),
            (f"{api}/runs/{run}/cancel", CancelHandler, {}),
            (f"{api}/runs/{run}/resume", ResumeHandler, {}),
            (f"{api}/runs/{run}/nodes/{node}/retry", RetryHandler, {}),
            (f"{api}/runs/{run}/nodes/{node}/signal", SignalHandler, {}),
            (f"{api}/flows", FlowsHandler, {}),
            (f"{api}/flows/{node}/runs", StartHandler, {}),
            (f"{api}/workers", WorkersHandler, {}),
            (f"{api}/schedules", SchedulesHandler, {}),
            (f"{api}/schedules/([^/]+)/(pause|resume)", ScheduleActionHandler, {}),
            (f"{api}/.*", NotFoundHandler, {}),
        ]
        rules = [(path, handler, {"dash": self, **extra}) for path, handler, extra in routes]
        return web.Application(
            rules,
            compress_response=True,
            default_handler_class=NotFoundHandler,
            default_handler_args={"dash": self},
        )


def has_body(request: Any) -> bool:
    """True when a body follows the request's head (not read yet, in ``prepare``)."""
    headers = request.headers
    return headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in headers


def hang_up(request: Any) -> None:
    """Close the connection of a request that was answered before its body was read
    (Tornado would read the body, or answer 400 after the answer for one too large)."""
    if request.connection is not None:
        request.connection.close()


def too_large(limits: Limits) -> Refusal:
    return Refusal(
        413, f"the request body is larger than {limits.max_body_bytes} bytes: refused unread"
    )


# -- handlers --------------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_body(body: bytes) -> dict[str, Any]:
    """A request's JSON object body ({} when empty); BadRequest (400) otherwise, NaN and
    Infinity included (Python's json reads them; JSON has no such numbers)."""
    if not body:
        return {}
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except ValueError as exc:
        raise BadRequest(f"the request body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


# The status of celery-graph's own errors; the first match wins, so subclasses come first.
# A view's HttpError carries its own status; any other exception is a 500 and is logged.
_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (RunNotFound, 404),
    (GraphNotFound, 404),
    (RunNotResumable, 409),
    (SignalRefused, 409),
    (ResultTooLarge, 413),
    (StoreUnavailable, 503),
    (Backpressure, 503),
    (InputTooLarge, 413),
    (GraphDefinitionError, 400),
    (SerializationError, 400),
    (CeleryGraphError, 500),
)


def status_of(exc: BaseException) -> int | None:
    """The HTTP status a view's exception answers with; None for a server bug."""
    if isinstance(exc, HttpError):
        return exc.status
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code
    return None


class BaseHandler(_Base):
    """Every page and API call: checked by :meth:`Dashboard.admit` before the body is
    read (handlers stream their bodies: Tornado parses none of them), bodies kept up to
    the limit, a client that goes away logged in one line."""

    dash: Dashboard

    def initialize(self, dash: Dashboard) -> None:
        self.dash = dash
        self._chunks: list[bytes] = []
        self._size = 0

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'",
        )

    async def prepare(self) -> None:
        refusal = await self.dash.admit(self.request)
        if refusal is not None:
            await self.refuse(refusal, body_pending=has_body(self.request))

    async def refuse(self, refusal: Refusal, body_pending: bool) -> None:
        """Answer ``refusal``; with a body still on its way, close the connection after
        the answer rather than read the body."""
        for name, value in refusal.headers.items():
            self.set_header(name, value)
        await self.send_error_json(refusal.status, refusal.message)
        if body_pending:
            hang_up(self.request)

    async def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return
        self._size += len(chunk)
        if self._size > self.dash.limits.max_body_bytes:
            self._chunks.clear()
            await self.refuse(too_large(self.dash.limits), body_pending=True)
            return
        self._chunks.append(chunk)

    @property
    def body(self) -> bytes:
        """The request's body (read up to the limit)."""
        return b"".join(self._chunks)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, iostream.StreamClosedError):  # the client went away
            logger.info(
                "celery-graph ui: %s %s: the connection closed before the request was read",
                self.request.method,
                self.request.path,
            )
            return
        super().log_exception(typ, value, tb)

    def send_json(self, data: Any, status: int = 200) -> Awaitable[None]:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        # (an answer encoded already, the drawing of a graph, goes as it is)
        return self.finish(data if isinstance(data, Encoded) else json.dumps(data, default=str))

    def send_error_json(self, status: int, message: str) -> Awaitable[None]:
        return self.send_json({"error": message, "status": status}, status)

    async def answer(self, fn: Callable[..., Any], *args: Any, status: int = 200) -> None:
        """Run ``fn(*args)`` off the event loop and send its result, or the error."""
        loop = asyncio.get_running_loop()
        try:
            data = await loop.run_in_executor(self.dash.pool, fn, *args)
        except Exception as exc:
            code = status_of(exc)
            if code is None:  # a bug of the server, not of the request
                logger.exception(
                    "celery-graph ui: %s %s failed", self.request.method, self.request.path
                )
                self.send_error_json(500, f"internal error ({type(exc).__name__}); see the log")
                return
            if code == 500:
                logger.warning(
                    "celery-graph ui: %s %s: %s", self.request.method, self.request.path, exc
                )
            self.send_error_json(code, str(exc) or type(exc).__name__)
            return
        self.send_json(data, status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.send_json({"error": self._reason, "status": status_code}, status_code)


if web is not None:  # every handler streams its body: it is checked before it is read
    web.stream_request_body(BaseHandler)


class HealthHandler(BaseHandler):
    """``/healthz``: open without auth (like Flower's /healthcheck); 503 if Redis is away."""

    async def prepare(self) -> None:
        pass  # for probes, which name the pod's address as Host and carry no credentials

    async def get(self) -> None:
        def ping() -> dict[str, bool]:
            self.dash.state.ping()
            return {"ok": True}

        await self.answer(ping)


class PageHandler(BaseHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(self.dash.index_html)


if web is not None:

    @web.stream_request_body
    class StaticHandler(web.StaticFileHandler):
        """The front end's files, behind the same checks as the pages (a body, which no
        file request has, is dropped unread)."""

        def initialize(self, path: str, dash: Dashboard) -> None:  # type: ignore[override]
            super().initialize(path)
            self.dash = dash

        async def prepare(self) -> None:
            refusal = await self.dash.admit(self.request)
            if refusal is not None:
                for name, value in refusal.headers.items():
                    self.set_header(name, value)
                self.set_status(refusal.status)
                await self.finish(refusal.message)
                if has_body(self.request):
                    hang_up(self.request)

        def data_received(self, chunk: bytes) -> None:
            pass

        def set_extra_headers(self, path: str) -> None:
            self.set_header("X-Content-Type-Options", "nosniff")
            self.set_header("Cache-Control", "no-cache")

else:  # pragma: no cover
    StaticHandler = BaseHandler  # type: ignore[misc]


class InfoHandler(BaseHandler):
    async def get(self) -> None:
        await self.answer(self.dash.views.info)


class RunsHandler(BaseHandler):
    PARAMS = ("state", "flow", "since", "until", "q", "limit", "cursor")

    async def get(self) -> None:
        params = {name: self.get_query_argument(name, None) for name in self.PARAMS}

        def listing() -> dict[str, Any]:
            query = RunQuery.from_params(params.get)
            return self.dash.lister.page(query).as_json()

        await self.answer(listing)


class RunHandler(BaseHandler):
    async def get(self, run_id: str) -> None:
        await self.answer(self.dash.views.run, run_id)


class GraphHandler(BaseHandler):
    async def get(self, run_id: str) -> None:
        await self.answer(self.dash.views.graph_json, run_id)


class NodeHandler(BaseHandler):
    async def get(self, run_id: str, node_id: str) -> None:
        await self.answer(self.dash.views.node, run_id, node_id)


class CancelHandler(BaseHandler):
    async def post(self, run_id: str) -> None:
        terminate = parse_body(self.body).get("terminate") is True
        await self.answer(lambda: self.dash.views.cancel(run_id, terminate=terminate))


class ResumeHandler(BaseHandler):
    async def post(self, run_id: str) -> None:
        await self.answer(self.dash.views.resume, run_id)


class RetryHandler(BaseHandler):
    async def post(self, run_id: str, node_id: str) -> None:
        await self.answer(self.dash.views.resume, run_id, node_id)


class SignalHandler(BaseHandler):
    async def post(self, run_id: str, node_id: str) -> None:
        body = self.body
        await self.answer(lambda: self.dash.views.signal(run_id, node_id, parse_body(body)))


class FlowsHandler(BaseHandler):
    async def get(self) -> None:
        views = self.dash.views
        await self.answer(lambda: {"flows": views.flows(), "names": views.flow_names()})


class StartHandler(BaseHandler):
    async def post(self, name: str) -> None:
        body = self.body
        key = self.request.headers.get("Idempotency-Key")

        def start() -> dict[str, Any]:
            return self.dash.views.start(name, parse_body(body), key)

        await self.answer(start, status=201)


class WorkersHandler(BaseHandler):
    async def get(self) -> None:
        await self.answer(lambda: {"workers": self.dash.views.workers()})


class SchedulesHandler(BaseHandler):
    async def get(self) -> None:
        await self.answer(lambda: {"schedules": self.dash.views.schedules()})


class ScheduleActionHandler(BaseHandler):
    async def post(self, name: str, action: str) -> None:
        await self.answer(self.dash.views.pause_schedule, name, action == "pause")


class NotFoundHandler(BaseHandler):
    def get(self, *args: Any) -> None:
        what = "API endpoint" if "/api/" in self.request.path else "page"
        self.send_error_json(404, f"no such {what}: {self.request.path}")

    post = head = put = delete = patch = get


# -- running ---------------------------------------------------------------------------


class Server:
    """A dashboard serving in a background thread (``start``); ``stop()`` ends it."""

    def __init__(self, dash: Dashboard, host: str, port: int) -> None:
        self.dash = dash
        self.host = host
        self.port = port
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.http: Any = None  # the GuardedHTTPServer, while serving
        self._thread = threading.Thread(target=self._run, name="celery-graph-ui", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.dash.prefix}/"

    def _run(self) -> None:
        try:
            asyncio.run(self.main())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    async def main(self, on_ready: Callable[[], None] | None = None) -> None:
        """Serve until :meth:`stop` (or the caller's signal handler) sets the stop event."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        application = self.dash.application()
        sockets = netutil.bind_sockets(self.port, self.host)
        self.port = sockets[0].getsockname()[1]
        server = GuardedHTTPServer(application, limits=self.dash.limits)
        self.http = server
        server.add_sockets(sockets)
        self._ready.set()
        if on_ready:
            on_ready()
        try:
            await self._stop.wait()
        finally:
            server.stop()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.close_all_connections(), 5)
            self.dash.pool.shutdown(wait=False, cancel_futures=True)

    def start(self) -> Server:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def stop_soon(self) -> None:
        """Ask the server to stop (from any thread or a signal handler)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def stop(self) -> None:
        """Stop the server started by :meth:`start` and wait for its thread."""
        self.stop_soon()
        self._thread.join(10)


def start(app: Any, host: str = "127.0.0.1", port: int = 0, **options: Any) -> Server:
    """Serve the dashboard of ``app`` from a background thread (``port=0``: any free
    port; see ``server.url``). Options as for :func:`serve`, and ``limits`` (a
    :class:`Limits`), ``throttle`` (a :class:`LoginThrottle`)."""
    return Server(Dashboard(app, host=host, **options), host, port).start()


def serve(
    app: Any,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    basic_auth: str | None = None,
    flower_url: str | None = None,
    url_prefix: str = "",
    flows: Mapping[str, str | Flow] | None = None,
    allowed_hosts: Iterable[str] = (),
    no_auth: bool = False,
    api_tokens: ApiTokens | None = None,
    out: IO[str] | None = None,
) -> None:
    """Serve the dashboard of ``app`` on ``host:port`` until SIGINT or SIGTERM.

    ``basic_auth``: ``"user:password"`` (several separated by commas) asks every request
    but ``/healthz`` for them; an address other machines reach needs it, or ``no_auth``.
    ``allowed_hosts``: names (or addresses) besides loopback and ``host`` that requests
    may be sent to (the name of a proxy in front; ``"*"``: any). ``flower_url``: link
    each node to its task in Flower. ``url_prefix``: serve under a path (behind a proxy).
    ``flows``: the flows to start from the page (default: ``app.conf.graph_ui_flows``).
    ``api_tokens``: bearer tokens the trigger API (``POST /api/flows/<name>/runs``)
    accepts (docs/trigger-api.md); none by default."""
    out = out or sys.stderr
    require_tornado()
    dash = Dashboard(
        app,
        flower_url=flower_url,
        flows=flows,
        basic_auth=basic_auth,
        url_prefix=url_prefix,
        host=host,
        allowed_hosts=allowed_hosts,
        no_auth=no_auth,
        api_tokens=api_tokens,
    )
    dash.state.ping()
    server = Server(dash, host, port)

    def ready() -> None:
        out.write(
            f"celery-graph ui: serving {server.url} (key prefix "
            f"{dash.state.keys.prefix!r}); Ctrl-C stops\n"
        )
        if no_auth and exposed(host):
            out.write(
                f"celery-graph ui: serving {host} without authentication (--no-auth): "
                "anyone who reaches the port can see runs and cancel them\n"
            )
        out.flush()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, server.stop_soon)

    asyncio.run(server.main(on_ready=ready))
