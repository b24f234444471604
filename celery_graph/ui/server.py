"""The dashboard's web server: the pages, the JSON API, basic auth, on Tornado.

Tornado is the one dependency (``pip install 'celery-graph[ui]'``); this module imports
without it and ``serve()`` says what to install. Redis calls block, so every request's
work runs in a small thread pool and never holds up the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import IO, Any
from urllib.parse import urlsplit

from ..dsl import Flow
from ..errors import (
    Backpressure,
    CeleryGraphError,
    ConfigurationError,
    GraphDefinitionError,
    GraphNotFound,
    RunNotFound,
    RunNotResumable,
    SerializationError,
    StoreUnavailable,
    UsageError,
)
from ..state import state_for
from .errors import BadRequest, HttpError
from .flows import FlowRegistry
from .listing import RunLister, RunQuery
from .views import Views

try:  # the [ui] extra
    from tornado import httpserver, netutil, web
except ImportError:  # pragma: no cover - exercised by installs without the extra
    web = None  # type: ignore[assignment]

DEFAULT_PORT = 5580
logger = logging.getLogger("celery_graph.ui")
STATIC = resources.files(__package__) / "static"
PAGES = (r"/", r"/runs/[0-9a-f]{32}", r"/flows", r"/workers")

_Base: Any = web.RequestHandler if web is not None else object


def require_tornado() -> None:
    if web is None:
        raise ConfigurationError("the dashboard needs Tornado: pip install 'celery-graph[ui]'")


def parse_basic_auth(value: str | None) -> list[tuple[str, str]] | None:
    """``user:password`` pairs, comma separated (like Flower's ``--basic-auth``)."""
    if not value:
        return None
    pairs = []
    for entry in value.split(","):
        user, sep, password = entry.partition(":")
        if not sep or not user or not password:
            raise UsageError(
                "--basic-auth: expected USER:PASSWORD (several separated by commas), got an "
                f"entry {'without a colon' if not sep else 'with an empty user or password'}"
            )
        pairs.append((user, password))
    return pairs


def normalise_prefix(prefix: str | None) -> str:
    """``/dash`` style: a leading slash, no trailing one; "" for none."""
    prefix = (prefix or "").strip("/")
    if any(c in prefix for c in "?#\"'<> "):
        raise UsageError(f"--url-prefix {prefix!r}: use a plain path such as /celery-graph")
    return f"/{prefix}" if prefix else ""


class Dashboard:
    """Everything a request needs, for one Celery app."""

    def __init__(
        self,
        app: Any,
        *,
        flower_url: str | None = None,
        flows: Mapping[str, str | Flow] | None = None,
        basic_auth: str | None = None,
        url_prefix: str = "",
        workers: int = 8,
    ) -> None:
        self.app = app
        self.state = state_for(app)
        self.registry = FlowRegistry(app, flows)
        self.views = Views(app, self.state, self.registry, flower_url)
        self.lister = RunLister(self.state.index, self.registry.name_of, by_graph=self.registry.get)
        self.credentials = parse_basic_auth(basic_auth)
        self.prefix = normalise_prefix(url_prefix)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cg-ui")
        index = (STATIC / "index.html").read_text()
        self.index_html = index.replace("__BASE__", self.prefix + "/")

    def authorised(self, header: str | None) -> bool:
        if self.credentials is None:
            return True
        scheme, _, encoded = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        ok = False
        for u, p in self.credentials:  # compare with every entry: no early exit
            ok |= hmac.compare_digest(u, user) & hmac.compare_digest(p, password)
        return ok

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
            (f"{api}/flows", FlowsHandler, {}),
            (f"{api}/flows/{node}/runs", StartHandler, {}),
            (f"{api}/workers", WorkersHandler, {}),
            (f"{api}/.*", NotFoundHandler, {}),
        ]
        rules = [(path, handler, {"dash": self, **extra}) for path, handler, extra in routes]
        return web.Application(rules, compress_response=True)


# -- handlers --------------------------------------------------------------------------


def parse_body(body: bytes) -> dict[str, Any]:
    """A request's JSON object body ({} when empty); BadRequest (400) otherwise."""
    if not body:
        return {}
    try:
        data = json.loads(body)
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
    (StoreUnavailable, 503),
    (Backpressure, 503),
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
    dash: Dashboard

    def initialize(self, dash: Dashboard) -> None:
        self.dash = dash

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'",
        )

    def prepare(self) -> None:
        if not self.dash.authorised(self.request.headers.get("Authorization")):
            self.set_header("WWW-Authenticate", 'Basic realm="celery-graph"')
            self.send_error_json(401, "authentication required (--basic-auth)")
            return
        if self.request.method == "POST":
            self._check_same_origin()

    def _check_same_origin(self) -> None:
        """Actions come from the dashboard's own page: JSON bodies, same origin. A form
        or a page on another site cannot send them with the user's credentials."""
        ctype = self.request.headers.get("Content-Type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            self.send_error_json(415, "send actions as JSON (Content-Type: application/json)")
            return
        if self.request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            self.send_error_json(403, "cross-site request refused")
            return
        origin = self.request.headers.get("Origin")
        if origin and urlsplit(origin).netloc != self.request.host:
            self.send_error_json(403, f"request from origin {origin} refused")

    def send_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(data, default=str))

    def send_error_json(self, status: int, message: str) -> None:
        self.send_json({"error": message, "status": status}, status)

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


class HealthHandler(BaseHandler):
    """``/healthz``: open without auth (like Flower's /healthcheck); 503 if Redis is away."""

    def prepare(self) -> None:
        pass

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

    class StaticHandler(web.StaticFileHandler):
        """The front end's files, behind the same auth as the pages."""

        def initialize(self, path: str, dash: Dashboard) -> None:  # type: ignore[override]
            super().initialize(path)
            self.dash = dash

        def prepare(self) -> None:
            if not self.dash.authorised(self.request.headers.get("Authorization")):
                self.set_header("WWW-Authenticate", 'Basic realm="celery-graph"')
                self.set_status(401)
                self.finish("authentication required")

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
        await self.answer(self.dash.views.graph, run_id)


class NodeHandler(BaseHandler):
    async def get(self, run_id: str, node_id: str) -> None:
        await self.answer(self.dash.views.node, run_id, node_id)


class CancelHandler(BaseHandler):
    async def post(self, run_id: str) -> None:
        await self.answer(self.dash.views.cancel, run_id)


class ResumeHandler(BaseHandler):
    async def post(self, run_id: str) -> None:
        await self.answer(self.dash.views.resume, run_id)


class RetryHandler(BaseHandler):
    async def post(self, run_id: str, node_id: str) -> None:
        await self.answer(self.dash.views.resume, run_id, node_id)


class FlowsHandler(BaseHandler):
    async def get(self) -> None:
        views = self.dash.views
        await self.answer(lambda: {"flows": views.flows(), "names": views.flow_names()})


class StartHandler(BaseHandler):
    async def post(self, name: str) -> None:
        body = self.request.body
        await self.answer(lambda: self.dash.views.start(name, parse_body(body)), status=201)


class WorkersHandler(BaseHandler):
    async def get(self) -> None:
        await self.answer(lambda: {"workers": self.dash.views.workers()})


class NotFoundHandler(BaseHandler):
    def get(self) -> None:
        self.send_error_json(404, f"no such API endpoint: {self.request.path}")

    post = get


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
        server = httpserver.HTTPServer(application)
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
    port; see ``server.url``). Options as for :func:`serve`."""
    return Server(Dashboard(app, **options), host, port).start()


def serve(
    app: Any,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    basic_auth: str | None = None,
    flower_url: str | None = None,
    url_prefix: str = "",
    flows: Mapping[str, str | Flow] | None = None,
    out: IO[str] | None = None,
) -> None:
    """Serve the dashboard of ``app`` on ``host:port`` until SIGINT or SIGTERM.

    ``basic_auth``: ``"user:password"`` (several separated by commas) asks every request
    but ``/healthz`` for them. ``flower_url``: link each node to its task in Flower.
    ``url_prefix``: serve under a path (behind a proxy). ``flows``: the flows to start
    from the page (default: ``app.conf.graph_ui_flows``)."""
    out = out or sys.stderr
    require_tornado()
    dash = Dashboard(
        app, flower_url=flower_url, flows=flows, basic_auth=basic_auth, url_prefix=url_prefix
    )
    dash.state.ping()
    server = Server(dash, host, port)

    def ready() -> None:
        out.write(
            f"celery-graph ui: serving {server.url} (key prefix "
            f"{dash.state.keys.prefix!r}); Ctrl-C stops\n"
        )
        if dash.credentials is None and host not in ("127.0.0.1", "localhost", "::1"):
            out.write(
                f"celery-graph ui: warning: {host} without --basic-auth: anyone who "
                "reaches the port can see runs and cancel them\n"
            )
        out.flush()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, server.stop_soon)

    asyncio.run(server.main(on_ready=ready))
