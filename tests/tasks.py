"""Graph tasks used by the tests. Each records 'start:<node>' and 'end:<node>' in a Redis
list ``trace:<tag>`` so tests can check ordering and how often a node ran."""

from __future__ import annotations

import json
import os
import time

import redis
from celery import current_app, current_task, shared_task

from celery_graph import branch, task

_clients: dict[str, redis.Redis] = {}


def trace_client() -> redis.Redis:
    """Where traces go: CGTEST_TRACE_REDIS_URL (so they stay readable while a test stops
    the graph Redis), the app's cgtest_trace_url (an app whose graph state is on a
    cluster), else its graph Redis (from its configuration or the environment)."""
    app = current_task.app if current_task else current_app
    url = (
        os.environ.get("CGTEST_TRACE_REDIS_URL")
        or app.conf.get("cgtest_trace_url")
        or app.conf.get("graph_redis_url")
        or os.environ["CELERY_GRAPH_REDIS_URL"]  # a plain `celery worker` configured by it
    )
    if url not in _clients:
        # above the longest gate wait (30 s): redis-py 8 reads with a 5 s socket timeout
        # by default, which ended a gate held longer than that on a loaded machine
        _clients[url] = redis.Redis.from_url(url, socket_timeout=45)
    return _clients[url]


def trace(tag: str | None, event: str) -> None:
    if tag:
        trace_client().rpush(f"cgtest-trace:{tag}", event)


_NO_VALUE = object()


def note(tag: str | None, what: str, value: object = _NO_VALUE, delay: float = 0.0) -> None:
    """After ``delay`` seconds, add ``what`` to the trace of ``tag``, followed by
    ':<value as JSON, keys sorted>' when a value is given."""
    if delay:
        time.sleep(delay)
    if value is not _NO_VALUE:
        what = f"{what}:{json.dumps(value, sort_keys=True)}"
    trace(tag, what)


def read_trace(tag: str) -> list[str]:
    return [e.decode() for e in trace_client().lrange(f"cgtest-trace:{tag}", 0, -1)]


def _delivered(sender=None, task_id=None, kwargs=None, **_):
    """With CGTEST_TRACE_DELIVERIES set, every delivery of a tagged node message adds
    'delivered:<task id>' to its trace, whether or not the function then runs: the tests
    of copies turned away see that the copies came."""
    if isinstance(kwargs, dict) and kwargs.get("_graph"):
        trace(kwargs.get("tag"), f"delivered:{task_id}")


if os.environ.get("CGTEST_TRACE_DELIVERIES"):
    from celery.signals import task_prerun

    task_prerun.connect(_delivered, weak=False, dispatch_uid="cgtest.delivered")


def _held(sender=None, task_id=None, kwargs=None, **_):
    """With CGTEST_HOLD_PRERUN="<name>:<seconds>", the first delivery of the node message
    whose bound ``name`` it is (and ``tag``: bound too, so its message carries it) adds
    'prerun:<name>' to its trace and waits that long in Celery's task_prerun, before the
    function: a worker killed meanwhile holds the node's lease (an eager successor's,
    leased as running with its predecessor's end) and has run none of it."""
    name, seconds = os.environ["CGTEST_HOLD_PRERUN"].rsplit(":", 1)
    if not (isinstance(kwargs, dict) and kwargs.get("_graph") and kwargs.get("name") == name):
        return
    tag = kwargs.get("tag")
    if tag and f"prerun:{name}".encode() not in trace_client().lrange(f"cgtest-trace:{tag}", 0, -1):
        trace(tag, f"prerun:{name}")
        time.sleep(float(seconds))


if os.environ.get("CGTEST_HOLD_PRERUN"):
    from celery.signals import task_prerun

    task_prerun.connect(_held, weak=False, dispatch_uid="cgtest.held")


# -- ETL ----------------------------------------------------------------------------


@task
def extract(n: int = 3):
    return list(range(1, n + 1))


@task
def transform(extract, factor: int = 10):
    return [x * factor for x in extract]


@task
def audit(extract):
    return len(extract)


@task
def load(transform, audit):
    return {"rows": transform, "count": audit}


# -- traced steps --------------------------------------------------------------------


def _step(name: str, tag: str | None, delay: float = 0.0) -> str:
    trace(tag, f"start:{name}")
    if delay:
        time.sleep(delay)
    trace(tag, f"end:{name}")
    if os.environ.get("CGTEST_TRACE_PID"):  # the chaos check tells completions apart
        trace(tag, f"pid:{name}:{os.getpid()}")
    return name


@task
def step(tag=None, name: str = "step", delay: float = 0.0):
    return _step(name, tag, delay)


@task
def pid_step(tag=None, name: str = "pid_step", delay: float = 0.0):
    """A step that first writes ``pid:<name>:<its process id>`` (a test may look for it)."""
    trace(tag, f"pid:{name}:{os.getpid()}")
    return _step(name, tag, delay)


def _make_t(i: int):
    def fn(tag=None, delay: float = 0.0):
        return _step(f"t{i}", tag, delay)

    fn.__name__ = fn.__qualname__ = f"t{i}"
    fn.__module__ = __name__
    return task(fn)


t1, t2, t3, t4, t5, t6, t7, t8 = (_make_t(i) for i in range(1, 9))


@task
def add(x: int, y: int = 0):
    return x + y


@task
def double(add):
    return add * 2


@task
def source(value: int = 1):
    return value


@task
def collect(batch):
    return batch


@task
def join_count(tag=None):
    """Counts its executions in Redis, so a test can prove it ran exactly once."""
    if tag:
        trace_client().incr(f"cgtest-count:{tag}:join_count")
    return _step("join_count", tag)


@task
def boom(tag=None):
    trace(tag, "start:boom")
    raise ValueError("boom went the node")


@task
def after_boom(tag=None):
    return _step("after_boom", tag)


@task
def needs_input(x, tag=None):
    return x


@task
def slow(tag=None, delay: float = 0.5, name: str = "slow"):
    return _step(name, tag, delay)


@task
def held(gate: str = "", timeout: float = 60.0):
    """Runs until the test opens ``gate`` (``open_gate``) or ``timeout`` passes: a node that
    is still running when the test acts, however loaded the machine is."""
    deadline = time.monotonic() + timeout
    while not trace_client().exists(f"cgtest-gate:{gate}") and time.monotonic() < deadline:
        time.sleep(0.05)
    return gate


def open_gate(client: redis.Redis, gate: str) -> None:
    """Lets every ``held`` node of ``gate`` finish (and any that starts again)."""
    client.set(f"cgtest-gate:{gate}", "open", ex=300)


@task
def unencodable():
    return object()


@task(autoretry_for=(ConnectionError,), max_retries=3, default_retry_delay=0, retry_backoff=False)
def flaky(tag=None, fail_times: int = 2):
    """Fails with ConnectionError ``fail_times`` times, then succeeds."""
    attempt = trace_client().incr(f"cgtest-count:{tag}:flaky")
    trace(tag, f"attempt:flaky:{attempt}")
    if attempt <= fail_times:
        raise ConnectionError(f"transient failure {attempt}")
    return attempt


# ``step`` below is a required parameter that only the upstream node ``step`` supplies:
# the message carries none of it, so Celery's argument check at a re-send (``typing``)
# must not ask for it


def _first_attempt_raises(tag, name: str, exc: Exception) -> int:
    """The attempt's number; the first raises ``exc``."""
    attempt = trace_client().incr(f"cgtest-count:{tag}:{name}")
    if attempt == 1:
        raise exc
    return attempt


@task(autoretry_for=(ConnectionError,), max_retries=2, default_retry_delay=0, retry_backoff=False)
def needs_upstream_autoretry(step, tag=None):
    """Fails once with ConnectionError (Celery's ``autoretry_for`` sends it again)."""
    attempt = _first_attempt_raises(tag, "autoretry", ConnectionError("transient failure"))
    return f"{step}+{attempt}"


@task
def needs_upstream_once(step, tag=None):
    """Fails once with ValueError (for a node's ``with_retries``)."""
    attempt = _first_attempt_raises(tag, "once", ValueError("first attempt fails"))
    return f"{step}+{attempt}"


@task
def needs_upstream_store_away(step, tag=None):
    """Its first delivery meets the graph Redis away (StoreUnavailable): the executor
    sends the message again with a backoff, as it does when Redis is down."""
    from celery_graph.errors import StoreUnavailable

    away = StoreUnavailable("the graph Redis is away (raised by the test task)")
    return f"{step}+{_first_attempt_raises(tag, 'store_away', away)}"


@task
def big_result(size: int = 1000):
    return "x" * size


# routed to a queue no test worker consumes: for deadlines and backpressure
UNCONSUMED_QUEUE = f"cgtest-unconsumed-{os.environ.get('CGTEST_SESSION', 'local')}"


@task(queue=UNCONSUMED_QUEUE)
def unconsumed():
    return "never runs in the tests"


@task(soft_time_limit=0.5)
def over_soft_limit(tag=None):
    return _step("over_soft_limit", tag, 5.0)


@task(time_limit=1)
def over_hard_limit(tag=None):
    return _step("over_hard_limit", tag, 10.0)


@task(inject_context=True)
def bump(ctx, times: int = 50, name: str = "x"):
    """Many small atomic updates from parallel branches."""
    for _ in range(times):
        ctx.incr("hits")
    ctx.incr("weight", 0.5)
    ctx.append("seen", name)
    return ctx.run_id


@task(inject_context=True)
def tally(ctx):
    ctx.set("done", True)
    return {"hits": ctx.get("hits"), "weight": ctx.get("weight"), "seen": sorted(ctx.list("seen"))}


@task
def split(n: int = 5):
    return [f"item{i}" for i in range(n)]


@task
def process(split, tag=None):
    trace(tag, f"process:{split}")
    return split.upper()


@task
def slow_item(split, tag=None, delay: float = 1.0):
    trace(tag, f"start:{split}")
    time.sleep(delay)
    return split.upper()


@task
def merge_items(slow_item):
    return slow_item


@task
def merge(process):
    return process


@task
def route(which: str = "left", tag=None):
    trace(tag, "start:route")
    targets = [] if which == "none" else which.split("+")
    return branch(*targets, value=f"routed:{which}")


@task
def fails_once_after(tag=None, marker: str = "start:slow"):
    """Fails on its first call once ``marker`` is in the trace (another node has started),
    then succeeds with the call's number."""
    attempt = trace_client().incr(f"cgtest-count:{tag}:fails_once_after")
    if attempt == 1:
        deadline = time.monotonic() + 20
        while marker not in read_trace(tag) and time.monotonic() < deadline:
            time.sleep(0.02)
        raise ValueError("fails once, after its sibling started")
    return attempt


@task
def slow_route(which: str = "left", tag=None, delay: float = 1.0):
    """route, taking ``delay`` seconds before it chooses."""
    _step("slow_route", tag, delay)
    return branch(which, value=f"routed:{which}")


@task
def left(tag=None):
    return _step("left", tag)


@task
def right(tag=None):
    return _step("right", tag)


@task
def right_more(right, tag=None):
    return _step("right_more", tag)


@task
def after_branches(left, right, tag=None):
    trace(tag, "start:after_branches")
    return {"left": left, "right": right}


# -- result_of: a parameter fed by a node of another name ------------------------------


@task
def report(summary, title: str = "report"):
    return {"title": title, "summary": summary}


@task
def labelled(item, label):
    return f"{label}:{item}"


@task
def extras(**extra):
    return extra


@task
def measure(text: str = ""):
    return len(text)


# -- plain Celery tasks, not written for celery-graph ---------------------------------


@shared_task(name="tests.plain.resize")
def resize(image, width=100, height=100):
    return f"{image}@{width}x{height}"


@shared_task(name="tests.plain.count_chars", bind=True)
def count_chars(self, resize):
    return {"chars": len(resize), "task": self.name}


@task
def fails_then_ok(tag=None, fail_times: int = 1):
    """Raises ValueError (no Celery autoretry) the first ``fail_times`` calls."""
    attempt = trace_client().incr(f"cgtest-count:{tag}:fails_then_ok")
    if attempt <= fail_times:
        raise ValueError(f"attempt {attempt} fails")
    return attempt


@shared_task(name="tests.plain.offset")
def offset(value, by=1000):
    return value + by


@task
def incr(input):
    return input + 1


@task
def times_two(incr):
    return incr * 2


@shared_task(name="tests.plain.make_inputs")
def make_inputs(x):
    return {"x": x}


@shared_task(name="tests.plain.total")
def total(values):
    return sum(values)


# -- durable runs ---------------------------------------------------------------------


@task
def succeed_then_fail(tag=None, ok_after: float = 0.3, fail_after: float = 1.0):
    """The first copy of a message succeeds after ``ok_after`` s; a second copy running
    at the same time fails after ``fail_after`` s."""
    copy = trace_client().incr(f"cgtest-count:{tag}:succeed_then_fail")
    trace(tag, f"start:succeed_then_fail:{copy}")
    if copy == 1:
        time.sleep(ok_after)
        return "ok"
    time.sleep(fail_after)
    raise ValueError(f"copy {copy} fails")


@task
def fail_slowly(tag=None, delay: float = 0.5):
    trace(tag, "start:fail_slowly")
    time.sleep(delay)
    raise ValueError("fails slowly")


@task
def branches_join_once(left, right, tag=None):
    """A join behind a branch that fails on its first call."""
    calls = trace_client().incr(f"cgtest-count:{tag}:branches_join_once")
    trace(tag, f"start:branches_join_once:{calls}")
    if calls == 1:
        raise ValueError("the join fails once")
    return {"left": left, "right": right}


@task(inject_context=True)
def write_after_signal(ctx, tag=None):
    """Writes to the run's shared state after the test pushes ``cgtest-go:<tag>``."""
    trace(tag, "start:write_after_signal")
    trace_client().blpop([f"cgtest-go:{tag}"], timeout=30)
    ctx.set("late", True)
    return "wrote"


@task
def kill_own_process(tag=None):
    """SIGKILLs the process running it: a message that kills its worker every time."""
    import signal

    trace(tag, f"start:kill_own_process:{os.getpid()}")
    os.kill(os.getpid(), signal.SIGKILL)


@task(queue=UNCONSUMED_QUEUE)
def unconsumed_value(value: int = 41):
    return value


@shared_task(name="tests.plain.keys_of")
def keys_of(mapping):
    return sorted(mapping)


# -- the chaos graph: data flows through it, so a wrong result shows ----------------------


def _chaos_step(name: str, tag: str | None, delay: float, value):
    trace(tag, f"start:{name}:{time.time():.6f}")
    if delay:
        time.sleep(delay)
    trace(tag, f"end:{name}:{time.time():.6f}:{os.getpid()}")
    return value


@task
def ch_a(seed: int, tag=None, delay: float = 0.0):
    return _chaos_step("ch_a", tag, delay, seed + 1)


@task
def ch_b(ch_a, tag=None, delay: float = 0.0):
    return _chaos_step("ch_b", tag, delay, ch_a * 2)


@task
def ch_c(ch_a, tag=None, delay: float = 0.0):
    return _chaos_step("ch_c", tag, delay, ch_a * 3)


@task
def ch_d(ch_b, tag=None, delay: float = 0.0):
    return _chaos_step("ch_d", tag, delay, ch_b + 5)


@task
def ch_join(ch_d, ch_c, tag=None, delay: float = 0.0):
    return _chaos_step("ch_join", tag, delay, ch_d + ch_c)


@task
def item_fails_once(split, tag=None, bad: str = "item3", always: bool = False):
    """Upper-cases an item; the item ``bad`` fails its first call (or every call)."""
    calls = trace_client().incr(f"cgtest-count:{tag}:{split}")
    trace(tag, f"call:{split}")
    if split == bad and (always or calls == 1):
        raise ValueError(f"{split} fails")
    return split.upper()


@task
def gather_items(item_fails_once):
    return item_fails_once


# -- concurrency limits (tests/test_concurrency.py) ------------------------------------


@task
def occupy(tag: str, tenant: str = "-", seconds: float = 0.2, mark: str = "", gate: str = ""):
    """Holds a worker for ``seconds`` (with a ``gate``: until the test opens it, at most
    ``seconds``); ``mark`` "start" / "end" records 'start:<tenant>' / 'end:<tenant>' in the
    trace first / last, so a two-node run brackets its whole life."""
    if mark == "start":
        trace(tag, f"start:{tenant}")
    if gate:
        held(gate, timeout=seconds)
    else:
        time.sleep(seconds)
    if mark == "end":
        trace(tag, f"end:{tenant}")
    return tenant


@task(graph_concurrency=1)
def exclusive(tag: str, seconds: float = 0.1):
    """At most one at once across every worker: 'start' / 'end' in the trace around it."""
    trace(tag, "start:x")
    time.sleep(seconds)
    trace(tag, "end:x")
    return "x"


@task(graph_rate_limit="5/s")
def paced(tag: str):
    """At most 5 starts a second across every worker: the graph Redis's time of each."""
    seconds, micros = trace_client().time()
    trace(tag, f"at:{seconds + micros / 1e6:.6f}")
    return "paced"


# the tasks of the tests of handlers and compensations, registered wherever these are
from tests import after_tasks  # noqa: E402, F401


@task(graph_eager=False)
def always_published(tag=None, name: str = "always_published", delay: float = 0.0):
    """A node that is always published, never run as an eager successor."""
    return _step(name, tag, delay)
