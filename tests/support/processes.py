"""The one way the tests start a process they stop again: ``Process``, a ``Popen`` run from
the work tree (its ``celery_graph`` and ``tests`` packages first on PYTHONPATH), in a
process group of its own unless asked otherwise (so stopping it takes a worker's pool
processes along), its output in a log file or the test's own output.

Every worker subprocess is one, whatever its command line (``worker_argv``):

- ``celery_worker`` / ``graph_worker``: ``celery -A APP worker`` / ``graph-worker -A APP``
  as a user types them, for the duration of a ``with`` block;
- ``start_worker``: a ``graph-worker`` of the ops app (tests/apps/opsapp.py) on a queue
  and key prefix of the test's, logging to ``tmp_path``;
- ``Workers``: ``celery worker``s of tests.brokerapp on a private queue and key prefix,
  started, killed, restarted and supervised by fault tests;
- ``amqp_worker``: the RabbitMQ worker of the engine tests (tests/support/fixtures.py).

Each of them is declared with ``starts_processes``: a test or fixture that calls one is
slow (tests/support/tiers.py). Plus the command helpers: ``subprocess_env``/``base_env``
(an environment for a subprocess), ``run_py`` and ``cli`` (a command run to its end)."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from tests.support import ROOT
from tests.support.apps import configure_for_crashes, make_app
from tests.support.helpers import session_name, starts_processes, wait_for

SESSION = session_name()
GRAPH_WORKER = [sys.executable, "-m", "celery_graph.worker"]
CELERY = [sys.executable, "-m", "celery"]
# the worker starters' commands: the same, without the `celery` sub-commands of packages
# other than celery-graph (Flower's: tests/support/launch.py)
LAUNCH = [sys.executable, "-m", "tests.support.launch"]
# what every worker of the tests runs with unless the test says otherwise
WORKER_OPTIONS = (
    "-P",
    "threads",
    "-c",
    "4",
    "-l",
    "WARNING",
    "--without-gossip",
    "--without-mingle",
)


# -- environments and commands run to their end --------------------------------------------


def with_root(pythonpath: str | None, *first: str) -> str:
    """A PYTHONPATH with ``first`` and the work tree ahead of ``pythonpath``: the work
    tree's celery_graph and tests packages win over any installed copy."""
    return os.pathsep.join(p for p in (*first, str(ROOT), pythonpath or "") if p)


def subprocess_env(**extra: str) -> dict[str, str]:
    """This process's environment with the work tree first on PYTHONPATH, no
    CELERY_GRAPH_KEY_PREFIX or CELERY_GRAPH_REDIS_URL of its own, and ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = with_root(env.get("PYTHONPATH"))
    env.pop("CELERY_GRAPH_KEY_PREFIX", None)
    env.pop("CELERY_GRAPH_REDIS_URL", None)
    env.update(extra)
    return env


def base_env(redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of a command or worker on ``redis_url`` (broker and graph state)
    with a key prefix of its own, and ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = with_root(env.get("PYTHONPATH"))
    env["CELERY_GRAPH_REDIS_URL"] = redis_url
    env["CELERY_GRAPH_KEY_PREFIX"] = f"cgcli:{uuid.uuid4().hex[:8]}"
    env.pop("CELERY_BROKER_URL", None)
    env.update(extra)
    return env


def redis_db_url(url: str, db: int) -> str:
    """``url`` pointing at database ``db``: a private set of queues and keys per test."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def run_py(
    args: Sequence[str],
    env: dict[str, str],
    timeout: float = 90,
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` from the work tree, run to its end, its output captured."""
    return subprocess.run(
        [sys.executable, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cli(*args: str, env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """``celery-graph ARGS`` as a user types it (the console script's module)."""
    return run_py(["-m", "celery_graph.cli", *args], env, timeout)


def graph_worker_available() -> bool:
    return importlib.util.find_spec("celery_graph.worker") is not None


@functools.cache
def graph_worker_help() -> str:
    """What `graph-worker --help` prints (run once per test session)."""
    done = run_py(["-m", "celery_graph.worker", "--help"], subprocess_env(), timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


# -- the process ---------------------------------------------------------------------------


@starts_processes
class Process(subprocess.Popen):
    """``argv`` started from the work tree; stopped with ``stop()``.

    ``log``: a path to write its output to, True for a temporary file, None (the default)
    for the test's own output. ``own_group``: in a process group of its own (a session),
    which ``stop()`` signals as a whole, pool processes included; else only the process
    itself is signalled."""

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        *,
        log: Path | bool | None = None,
        own_group: bool = True,
    ) -> None:
        self.argv = list(argv)
        self.own_group = own_group
        self.log_path = log if isinstance(log, Path) else None
        self._log: IO[bytes] | None = None
        if isinstance(log, Path):
            self._log = open(log, "wb")  # noqa: SIM115  closed in stop()
        elif log:
            self._log = tempfile.TemporaryFile()  # noqa: SIM115  closed in stop()
        super().__init__(
            self.argv,
            env=subprocess_env() if env is None else env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log else None,
            start_new_session=own_group,
        )

    @property
    def proc(self) -> Process:
        """Itself (the old ``WorkerProcess`` held its ``Popen`` here)."""
        return self

    def output(self) -> str:
        """What it printed so far (read through a handle of its own: the child's offset
        is shared)."""
        if self._log is None or self._log.closed:
            return ""
        self._log.flush()
        return Path(f"/proc/self/fd/{self._log.fileno()}").read_text(errors="replace")

    def log(self) -> str:
        """What it printed so far, also after ``stop()`` when it logs to a path."""
        if self.log_path is not None and (self._log is None or self._log.closed):
            return self.log_path.read_text(errors="replace")
        return self.output()

    def signal(self, sig: int) -> None:
        self.send_signal(sig)

    def signal_all(self, sig: int) -> None:
        """``sig`` to its process group (pool processes too; they may outlive the main
        process), or to the process alone when it has no group of its own."""
        if self.own_group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
        elif self.poll() is None:
            self.send_signal(sig)

    def stop(self, grace: float = 0.0) -> str:
        """SIGTERM and up to ``grace`` seconds to exit (none: not asked), then SIGKILL
        (its whole group, when it has one); returns what it printed."""
        if grace and self.poll() is None:
            self.signal_all(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.wait(grace)
        self.signal_all(signal.SIGKILL)
        self.wait(10)
        output = self.output()
        if self._log is not None:
            self._log.close()
        return output


def worker_argv(app: str, *options: str, graph: bool = False) -> list[str]:
    """``celery -A APP worker OPTIONS`` (with ``graph``: ``graph-worker -A APP OPTIONS``),
    without other packages' ``celery`` sub-commands (tests/support/launch.py)."""
    if graph:
        return [*LAUNCH, "celery_graph.worker", "-A", app, *options]
    return [*LAUNCH, "celery", "-A", app, "worker", *options]


# -- a worker for the length of a with block -------------------------------------------------


@contextlib.contextmanager
def _worker(argv: list[str], env: dict[str, str]) -> Iterator[Process]:
    proc = Process(argv, env, log=True)
    try:
        yield proc
    finally:
        output = proc.stop(grace=30)
        if proc.returncode not in (0, -signal.SIGTERM):
            print(f"{' '.join(argv)} exited {proc.returncode}:\n{output}")


@starts_processes
def celery_worker(
    app: str, env: dict[str, str], *extra: str
) -> contextlib.AbstractContextManager[Process]:
    """A real ``celery -A app worker`` process; stopped (TERM, then KILL) on exit."""
    return _worker(worker_argv(app, *WORKER_OPTIONS, *extra), env)


@starts_processes
def graph_worker(
    app: str, env: dict[str, str], *extra: str
) -> contextlib.AbstractContextManager[Process]:
    """A real ``graph-worker -A app`` process (celery worker options pass through)."""
    return _worker(worker_argv(app, *WORKER_OPTIONS, *extra, graph=True), env)


# -- graph-worker subprocesses of the ops app -----------------------------------------------


@starts_processes
def start_worker(
    tmp_path: Path,
    name: str,
    *,
    broker_url: str,
    queue: str,
    prefix: str,
    extra_args: list[str] | None = None,
    env: dict[str, Any] | None = None,
    app: str = "tests.apps.opsapp",
    concurrency: int = 2,
    graph: bool = True,
) -> Process:
    """A ``graph-worker -A APP`` (the ops app, configured by CGOPS_* variables; with
    ``graph=False`` a plain ``celery -A APP worker``), on ``queue`` under key prefix
    ``prefix``, heartbeating every second, logging to ``tmp_path/NAME.log``; the test
    stops it (``stop()``)."""
    options = [
        "--key-prefix",
        prefix,
        "-n",
        f"{name}@%h",
        "-c",
        str(concurrency),
        "-l",
        "INFO",
        "--without-mingle",
        "--without-gossip",
        *(extra_args or []),
    ]
    penv = subprocess_env(
        CGOPS_BROKER_URL=broker_url,
        CGOPS_QUEUE=queue,
        CELERY_GRAPH_HEARTBEAT_INTERVAL="1",
        **{k: str(v) for k, v in (env or {}).items()},
    )
    return Process(worker_argv(app, *options, graph=graph), penv, log=tmp_path / f"{name}.log")


# -- the RabbitMQ worker of the engine tests ------------------------------------------------


@starts_processes
def amqp_worker(redis_url: str, amqp_url: str, hostname: str) -> Process:
    """``celery -A tests.brokerapp:amqp_app worker`` on the RabbitMQ at ``amqp_url``, its
    graph state in ``redis_url``; in the test process's group, its output the test's."""
    env = dict(
        os.environ,
        CGTEST_REDIS_URL=redis_url,
        CGTEST_AMQP_URL=amqp_url,
        CGTEST_SESSION=SESSION,
        PYTHONPATH=with_root(os.environ.get("PYTHONPATH")),
    )
    options = ["-n", hostname, "--without-heartbeat", *WORKER_OPTIONS]
    return Process(worker_argv("tests.brokerapp:amqp_app", *options), env, own_group=False)


# -- workers that fault tests kill -----------------------------------------------------------


@starts_processes
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
        env: dict[str, str] | None = None,
    ) -> None:
        """``stock``: the workers run with Celery's stock settings (tests.brokerapp's
        stock_app); ``isolate``: each worker in its own process group, so ``kill`` can
        take its pool processes with it; ``env``: added to their environment. As a
        context manager: stopped, and their queue purged, at the end."""
        self.concurrency = concurrency
        self.pool = pool
        self.stock = stock
        self.isolate = isolate
        self.redis_url = redis_url
        self.queue = f"cgtest-crash-{uuid.uuid4().hex[:8]}"
        # a prefix of its own: no other test's workers (and their reconcilers) see its runs
        self.prefix = f"cgtest:{SESSION}:{self.queue}"
        self.procs: dict[str, Process] = {}
        self.killed_pids: set[int] = set()
        self.extra_env: dict[str, str] = dict(env or {})
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

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        with self.app.connection_for_write() as conn:
            conn.default_channel.queue_purge(self.queue)

    def start(self, name: str) -> str:
        hostname = f"{name}-{self.queue}@localhost"
        self._spawn(hostname)
        wait_for(
            lambda: self.app.control.ping([hostname], timeout=0.5),
            timeout=60,
            what=f"worker {hostname} to answer ping",
        )
        return hostname

    def env(self) -> dict[str, str]:
        """The workers' environment: what tests.brokerapp's apps read, and ``extra_env``."""
        return dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            CGTEST_REDIS_URL=self.redis_url,
            CGTEST_QUEUE=self.queue,
            CGTEST_PREFIX=self.prefix,
            CGTEST_SESSION=SESSION,
            **self.extra_env,
        )

    def _spawn(self, hostname: str) -> None:
        env = self.env()
        if env.get("CGTEST_CLOCK_SKEW"):  # tests/skew/sitecustomize.py shifts its clock
            env["PYTHONPATH"] = with_root(None, str(ROOT / "tests" / "skew"))
        queues = self.queues()
        options = [
            *("-P", self.pool, "-c", str(self.concurrency), "-n", hostname, "-l", "WARNING"),
            *("--without-mingle", "--without-gossip"),
            *(["-Q", ",".join(queues)] if queues else []),
        ]
        argv = worker_argv(self.app_ref(), *options)
        self.procs[hostname] = Process(argv, env, own_group=self.isolate)

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
            proc.stop()
            if restart:
                self._spawn(hostname)

    def stop(self) -> None:
        with self._lock:  # the supervisor checks _stopping under the same lock
            self._stopping.set()
            procs = list(self.procs.values())
        for proc in procs:
            proc.stop()
        self.procs.clear()
