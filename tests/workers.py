"""`celery worker` subprocesses on a private queue and key prefix, for fault tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import uuid

from tests.brokerapp import configure_for_crashes, make_app
from tests.helpers import session_name, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SESSION = session_name()


class Workers:
    """`celery worker` subprocesses for one private queue and key prefix."""

    def __init__(
        self,
        redis_url: str,
        concurrency: int = 2,
        pool: str = "threads",
        graph_url: str | None = None,
        *,
        stock: bool = False,
        isolate: bool = False,
    ) -> None:
        """``stock``: the workers run with Celery's stock settings (tests.brokerapp's
        stock_app); ``isolate``: each worker in its own process group, so ``kill`` can
        take its pool processes with it."""
        self.concurrency = concurrency
        self.pool = pool
        self.stock = stock
        self.isolate = isolate
        self.redis_url = redis_url
        self.queue = f"cgtest-crash-{uuid.uuid4().hex[:8]}"
        # a prefix of its own: no other test's workers (and their reconcilers) see its runs
        self.prefix = f"cgtest:{SESSION}:{self.queue}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.killed_pids: set[int] = set()
        self.extra_env: dict[str, str] = {}
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.app = configure_for_crashes(
            make_app(redis_url, None, "cgtest_crash", SESSION), self.queue, self.prefix
        )
        if graph_url:
            self.extra_env["CGTEST_GRAPH_REDIS_URL"] = graph_url
            self.app.conf.graph_redis_url = graph_url
        if stock:
            self.extra_env["CGTEST_STOCK"] = "1"

    def start(self, name: str) -> str:
        hostname = f"{name}-{self.queue}@localhost"
        self._spawn(hostname)
        wait_for(
            lambda: self.app.control.ping([hostname], timeout=0.5),
            timeout=60,
            what=f"worker {hostname} to answer ping",
        )
        return hostname

    def _spawn(self, hostname: str) -> None:
        env = dict(
            os.environ,
            PYTHONPATH=ROOT,
            CGTEST_REDIS_URL=self.redis_url,
            CGTEST_QUEUE=self.queue,
            CGTEST_PREFIX=self.prefix,
            CGTEST_SESSION=SESSION,
            **self.extra_env,
        )
        if env.get("CGTEST_CLOCK_SKEW"):  # tests/skew/sitecustomize.py shifts its clock
            env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "tests", "skew"), ROOT])
        queues = self.queues()
        self.procs[hostname] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                self.app_ref(),
                "worker",
                "-P",
                self.pool,
                "-c",
                str(self.concurrency),
                "-n",
                hostname,
                "-l",
                "WARNING",
                "--without-mingle",
                "--without-gossip",
                *(["-Q", ",".join(queues)] if queues else []),
            ],
            env=env,
            cwd=ROOT,
            start_new_session=self.isolate,
        )

    def app_ref(self) -> str:
        """The workers' ``-A``."""
        return "tests.brokerapp:stock_app" if self.stock else "tests.brokerapp:env_app"

    def queues(self) -> list[str]:
        """The workers' ``-Q`` (none: the app's default queue)."""
        return []

    def supervise(self) -> None:
        """Restart any worker that exits, until stop(), as a process supervisor would."""

        def loop() -> None:
            while not self._stopping.wait(0.2):
                with self._lock:
                    for hostname, proc in list(self.procs.items()):
                        if proc.poll() is not None and not self._stopping.is_set():
                            self._spawn(hostname)

        threading.Thread(target=loop, daemon=True).start()

    def kill(self, hostname: str, restart: bool = False) -> None:
        """SIGKILL a worker (with its pool processes when isolated); with ``restart``, start
        it again at once (under the same lock as the supervisor, so it is never started
        twice)."""
        with self._lock:
            proc = self.procs.pop(hostname)
            self.killed_pids.add(proc.pid)
            if self.isolate:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            if restart:
                self._spawn(hostname)

    def stop(self) -> None:
        with self._lock:  # the supervisor checks _stopping under the same lock
            self._stopping.set()
            procs = list(self.procs.values())
        for proc in procs:
            if self.isolate:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
            proc.wait(10)
        self.procs.clear()
