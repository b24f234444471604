"""The dashboard's HTTP server: Tornado's, with limits a slow or hostile client cannot
talk its way around.

- The head of a request (request line and headers) must arrive within
  ``header_timeout`` seconds, all of it, and an idle keep-alive connection is closed
  after as long (Tornado's ``idle_connection_timeout`` bounds both); a body must arrive
  within ``body_timeout``.
- A head larger than ``max_header_bytes`` closes the connection.
- Bodies are refused above ``max_body_bytes`` with 413 by the handlers (server.py);
  Tornado itself stops reading at twice that, for the routes that are not the API's.
- At most ``max_connections`` connections are open. When a new one arrives at the
  limit, the connection that has waited longest for a request's head (a half-open
  socket, or an idle keep-alive one) is closed to make room, so a flood of sockets that
  never send anything cannot lock out people who do; only when every open connection is
  busy with a request is the newcomer turned away (503).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

try:  # the [ui] extra
    from tornado import httpserver, httputil
except ImportError:  # pragma: no cover - exercised by installs without the extra
    httpserver = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Limits:
    """What one dashboard allows a client (see the module's docstring)."""

    max_connections: int = 256
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_header_bytes: int = 32 * 1024
    max_body_bytes: int = 1 << 20


_BUSY_TEXT = b"too many connections; retry later\n"
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s"
    % (len(_BUSY_TEXT), _BUSY_TEXT)
)


if httpserver is not None:

    class _HeadWatch(httputil.HTTPMessageDelegate):
        """Passes a request on, and tells the server when its head has arrived."""

        def __init__(self, delegate: Any, waiting: OrderedDict[Any, None], conn: Any) -> None:
            self.delegate = delegate
            self.waiting = waiting
            self.conn = conn

        def headers_received(self, start_line: Any, headers: Any) -> Awaitable[None] | None:
            self.waiting.pop(self.conn, None)
            return self.delegate.headers_received(start_line, headers)

        def data_received(self, chunk: bytes) -> Awaitable[None] | None:
            return self.delegate.data_received(chunk)

        def finish(self) -> None:
            self.delegate.finish()

        def on_connection_close(self) -> None:
            self.waiting.pop(self.conn, None)
            self.delegate.on_connection_close()

    class GuardedHTTPServer(httpserver.HTTPServer):
        """Tornado's HTTPServer with :class:`Limits`: ``GuardedHTTPServer(app,
        limits=Limits())``."""

        def initialize(  # type: ignore[override]
            self, request_callback: Any, *, limits: Limits, **kwargs: Any
        ) -> None:
            super().initialize(
                request_callback,
                idle_connection_timeout=limits.header_timeout,
                body_timeout=limits.body_timeout,
                max_header_size=limits.max_header_bytes,
                max_body_size=2 * limits.max_body_bytes,
                **kwargs,
            )
            self.limits = limits
            # connections waiting for the head of a request, the longest waiting first
            self._waiting: OrderedDict[Any, None] = OrderedDict()
            self.turned_away = 0
            self.evicted = 0

        def handle_stream(self, stream: Any, address: Any) -> None:
            if len(self._connections) >= self.limits.max_connections and not self._evict():
                self.turned_away += 1
                written = stream.write(BUSY)
                written.add_done_callback(lambda f: (f.exception(), stream.close()))
                return
            before = set(self._connections)
            super().handle_stream(stream, address)
            # waiting for its first head from now (its request loop starts a little later)
            for conn in self._connections - before:
                self._waiting[conn] = None

        def start_request(self, server_conn: Any, request_conn: Any) -> Any:
            self._waiting[server_conn] = None
            self._waiting.move_to_end(server_conn)
            delegate = super().start_request(server_conn, request_conn)
            return _HeadWatch(delegate, self._waiting, server_conn)

        def on_close(self, server_conn: Any) -> None:
            self._waiting.pop(server_conn, None)
            super().on_close(server_conn)

        def _evict(self) -> bool:
            """Close the connection that has waited longest for a request's head."""
            while self._waiting:
                conn, _ = self._waiting.popitem(last=False)
                stream = getattr(conn, "stream", None)
                if stream is not None and not stream.closed():
                    stream.close()
                    self.evicted += 1
                    return True
            return False

        @property
        def open_connections(self) -> int:
            return len(self._connections)

else:  # pragma: no cover
    GuardedHTTPServer = None  # type: ignore[misc]

__all__ = ["BUSY", "GuardedHTTPServer", "Limits"]
