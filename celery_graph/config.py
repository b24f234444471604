"""Settings: one table says every setting's name, environment variable, default, type and
check, and drives reading, validation and the tables of docs/configuration.md.

``SETTINGS`` are read from the Celery app's configuration (``app.conf.graph_result_ttl``),
else from their environment variable, else the default: an explicit Celery setting wins. An
unset Celery setting is ``None``; an empty environment variable counts as unset.
``WORKER_SETTINGS`` are read from the environment only, by the worker's bootstep and by its
pool processes (``celery worker --metrics-port`` and friends set their variable, so pool
processes and a worker re-executed by ``-D`` see it too).

A malformed value raises one :class:`ConfigurationError` naming where it came from, the
value and what the setting accepts.
"""

from __future__ import annotations

import copy
import json
import math
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError, NoGraphRedis
from .keys import DEFAULT_PREFIX, Keys, check_prefix

# -- kinds of value ---------------------------------------------------------------------


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(value)
    return value


def _integer(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(value)
        return int(value)
    if isinstance(value, str):
        return int(value.strip())
    if isinstance(value, int):
        return value
    raise TypeError(value)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(value)
    number = float(value.strip() if isinstance(value, str) else value)
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def _json_object(value: Any) -> str:
    """A dict, or its JSON text, as canonical JSON (Settings must be hashable)."""
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict):
        raise TypeError(value)
    return json.dumps(value, sort_keys=True)


def _flag(value: Any) -> bool:
    return str(value).strip().lower() not in ("", "0", "false", "no", "off")


def _prefix(value: Any) -> str:
    return check_prefix(_text(value))


# Schemes of a graph Redis URL: one server, a Redis Cluster (any of its nodes, comma
# separated), or Sentinels (Celery's spelling: "sentinel://h1:26379;sentinel://h2:26379",
# the master named by the transport option "master_name").
SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "sentinel")


def scheme_of(url: Any) -> str | None:
    if not isinstance(url, str) or "://" not in url:
        return None
    scheme = url.split("://", 1)[0]
    return scheme if scheme in SCHEMES else None


@dataclass(frozen=True)
class Kind:
    """How a raw value (a Celery setting or an environment variable's text) becomes a
    setting's value: ``parse`` raises ValueError or TypeError on a malformed one (a
    ConfigurationError says what is wrong itself), ``check`` tells whether the parsed value
    is allowed, and ``rule`` says in words what is, for errors and the docs."""

    parse: Callable[[Any], Any]
    check: Callable[[Any], bool]
    rule: str


def _anything(value: Any) -> bool:
    return True


TEXT = Kind(_text, _anything, "text")
PREFIX = Kind(_prefix, _anything, "words of letters, digits, `_`, `.`, `-` joined by single colons")
REDIS_URL = Kind(
    _text,
    lambda url: scheme_of(url) is not None,
    "a URL starting with one of " + ", ".join(f"{s}://" for s in SCHEMES),
)
JSON_OBJECT = Kind(_json_object, _anything, "a dict (in the environment: a JSON object)")
POSITIVE_INT = Kind(_integer, lambda v: v > 0, "a positive integer")
COUNT = Kind(_integer, lambda v: v >= 0, "an integer, 0 or more")
POSITIVE_SECONDS = Kind(_number, lambda v: v > 0, "a positive number of seconds")
SECONDS = Kind(_number, lambda v: v >= 0, "a number of seconds, 0 or more")
PORT = Kind(_integer, lambda v: 0 < v < 65536, "a port number, 1-65535")
FLAG = Kind(_flag, _anything, "a flag: 1 turns it on; empty, 0, false, no or off leave it off")


# -- the table --------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One row of the settings table."""

    name: str  # the Celery setting (app.conf.NAME), or a worker setting's own name
    env: str  # the environment variable
    default: Any  # None: see ``shown``
    kind: Kind
    doc: str  # what it does, one line of the docs table
    shown: str = ""  # the default as the docs show it, when the value alone does not say
    unit: str = ""  # of the value, for the docs ("s" for every kind counted in seconds)
    flag: str = ""  # the `celery worker` option that sets the environment variable

    @property
    def field(self) -> str:
        """The attribute of :class:`Settings` that holds it (the name without graph_)."""
        return self.name.removeprefix("graph_")

    def parse(self, value: Any, source: str) -> Any:
        """``value``, read from ``source``, as the setting's value; ConfigurationError
        naming the source, the value and the rule when it is malformed."""
        try:
            parsed = self.kind.parse(value)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{source}: {exc}") from None
        except (TypeError, ValueError):
            parsed = None
        else:
            if self.kind.check(parsed):
                return parsed
        raise ConfigurationError(f"{source} = {value!r} is not valid: expected {self.kind.rule}")

    def read(self, conf: Any) -> Any:
        """The value from ``conf`` (an app's configuration, or None), else the environment,
        else the default."""
        value = conf.get(self.name) if conf is not None else None
        if value is not None:
            return self.parse(value, f"app.conf.{self.name}")
        raw = os.environ.get(self.env)
        if raw:
            return self.parse(raw, f"environment variable {self.env} ({self.name})")
        return self.default

    def read_env(self) -> Any:
        """The value from the environment only, else the default (worker settings)."""
        raw = os.environ.get(self.env)
        return self.parse(raw, f"environment variable {self.env}") if raw else self.default


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "graph_key_prefix",
        "CELERY_GRAPH_KEY_PREFIX",
        DEFAULT_PREFIX,
        PREFIX,
        "prefix of every Redis key (`myapp:workflows`); two apps may share a Redis under two "
        "prefixes",
    ),
    Setting(
        "graph_redis_url",
        "CELERY_GRAPH_REDIS_URL",
        None,
        REDIS_URL,
        "the Redis holding graphs, run state, barriers and results: one server, a Redis "
        "Cluster (`redis+cluster://h:p[,h:p]`) or Sentinels (`sentinel://h:p;sentinel://h:p`); "
        "see [Scaling out](scaling.md)",
        shown="the broker URL if it is Redis (Sentinel included), else the result backend "
        "URL if it is Redis",
    ),
    Setting(
        "graph_redis_transport_options",
        "CELERY_GRAPH_REDIS_TRANSPORT_OPTIONS",
        "{}",
        JSON_OBJECT,
        "Sentinel: `master_name` (required), `sentinel_kwargs` (password, TLS for the "
        "sentinels); passed to the primary's connection otherwise",
        shown="the broker's `broker_transport_options` when graph state is on the broker's "
        "Sentinel, else `{}`",
    ),
    Setting(
        "graph_result_ttl",
        "CELERY_GRAPH_RESULT_TTL",
        86400,
        POSITIVE_INT,
        "seconds a finished run's keys (record, results, node states) are kept",
        unit="s",
    ),
    Setting(
        "graph_run_ttl",
        "CELERY_GRAPH_RUN_TTL",
        7 * 86400,
        POSITIVE_INT,
        "the longest a run may last, in seconds; keys of an unfinished run expire after this",
        unit="s",
    ),
    Setting(
        "graph_store_ttl",
        "CELERY_GRAPH_STORE_TTL",
        7 * 86400,
        POSITIVE_INT,
        "seconds a stored graph is kept after its last use (sliding: each submission and "
        "each load refreshes it)",
        unit="s",
    ),
    Setting(
        "graph_cache_size",
        "CELERY_GRAPH_CACHE_SIZE",
        256,
        POSITIVE_INT,
        "parsed graphs cached per process (LRU)",
    ),
    Setting(
        "graph_max_result_bytes",
        "CELERY_GRAPH_MAX_RESULT_BYTES",
        16 << 20,
        POSITIVE_INT,
        "a larger encoded result fails the run (`ResultTooLarge`)",
        unit="bytes",
    ),
    Setting(
        "graph_max_input_bytes",
        "CELERY_GRAPH_MAX_INPUT_BYTES",
        16 << 20,
        POSITIVE_INT,
        "larger encoded run inputs are refused at submission, before anything is sent "
        "(`InputTooLarge`)",
        unit="bytes",
    ),
    Setting(
        "graph_max_graph_bytes",
        "CELERY_GRAPH_MAX_GRAPH_BYTES",
        64 << 20,
        POSITIVE_INT,
        "the largest graph stored or read (its JSON, and its compressed copy in Redis); a "
        "larger one is refused unread (`GraphTooLarge`)",
        unit="bytes",
    ),
    Setting(
        "graph_queued_lease",
        "CELERY_GRAPH_QUEUED_LEASE",
        30.0,
        POSITIVE_SECONDS,
        "a published node no worker started by then is sent again by the reconciler (while "
        "its queue still holds messages it waits, up to ten leases)",
    ),
    Setting(
        "graph_running_lease",
        "CELERY_GRAPH_RUNNING_LEASE",
        15.0,
        POSITIVE_SECONDS,
        "a running node's lease, renewed every third of it while the function runs; a node "
        "whose worker died is sent again after it runs out",
    ),
    Setting(
        "graph_reconcile_interval",
        "CELERY_GRAPH_RECONCILE_INTERVAL",
        2.0,
        POSITIVE_SECONDS,
        "how often the reconciler in each worker tries to sweep (one at a time, under a lock)",
    ),
    Setting(
        "graph_max_lost",
        "CELERY_GRAPH_MAX_LOST",
        5,
        POSITIVE_INT,
        "a node whose running lease runs out (its worker died running it) more often fails the "
        "run with `NodeLost`; copies of its message that find it running never count",
    ),
    Setting(
        "graph_max_queue_depth",
        "CELERY_GRAPH_MAX_QUEUE_DEPTH",
        0,
        COUNT,
        "submission waits while a root node's queue holds this many messages; 0 turns "
        "backpressure off",
    ),
    Setting(
        "graph_backpressure_timeout",
        "CELERY_GRAPH_BACKPRESSURE_TIMEOUT",
        30.0,
        SECONDS,
        "how long a submission waits for room in the queue, then `Backpressure` is raised",
    ),
    Setting(
        "graph_store_node_results",
        "CELERY_GRAPH_STORE_NODE_RESULTS",
        True,
        FLAG,
        "when the app has a result backend, also store each node's result and state there "
        "under its task id (`AsyncResult('<run>:<node>')`); off: the graph Redis only",
    ),
    Setting(
        "graph_eager_successors",
        "CELERY_GRAPH_EAGER_SUCCESSORS",
        True,
        FLAG,
        "a node's only released successor runs next in the same worker process when this "
        "worker consumes its queue (recorded and leased first, as a published node is), "
        "instead of a broker round trip; off: every node is published",
    ),
    Setting(
        "graph_eager_depth",
        "CELERY_GRAPH_EAGER_DEPTH",
        64,
        POSITIVE_INT,
        "eager successors one message runs at most; the next one is published (the "
        "message is acknowledged when its chain ends)",
    ),
    Setting(
        "graph_eager_seconds",
        "CELERY_GRAPH_EAGER_SECONDS",
        60.0,
        POSITIVE_SECONDS,
        "once a message's eager successors have run this long, the next one is published: "
        "the message is acknowledged well inside the broker's visibility timeout "
        "(RabbitMQ: `consumer_timeout`)",
    ),
)

WORKER_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "metrics_port",
        "CELERY_GRAPH_METRICS_PORT",
        None,
        PORT,
        "serve `/metrics` (Prometheus) and `/healthz` (liveness) on this port",
        shown="off",
        flag="--metrics-port",
    ),
    Setting(
        "metrics_host",
        "CELERY_GRAPH_METRICS_HOST",
        "127.0.0.1",
        TEXT,
        "the address the metrics server listens on; `0.0.0.0` (every interface) for a "
        "Prometheus on another host",
        flag="--metrics-host",
    ),
    Setting(
        "graceful_timeout",
        "CELERY_GRAPH_GRACEFUL_TIMEOUT",
        60.0,
        SECONDS,
        "how long SIGTERM/SIGINT wait for running tasks before handing them back",
        flag="--graceful-timeout",
    ),
    Setting(
        "heartbeat_interval",
        "CELERY_GRAPH_HEARTBEAT_INTERVAL",
        5.0,
        POSITIVE_SECONDS,
        "how often a worker refreshes its registry entry (`celery-graph workers`); it drops "
        "out after 3 missed heartbeats",
    ),
    Setting(
        "reliable_defaults",
        "CELERY_GRAPH_RELIABLE_DEFAULTS",
        False,
        FLAG,
        "`1`: apply `RELIABLE_DEFAULTS` where the app leaves them open (`graph-worker` sets "
        "it; any `celery worker` takes it)",
        shown="off",
    ),
)

_BY_NAME = {s.name: s for s in (*SETTINGS, *WORKER_SETTINGS)}


def setting(name: str) -> Setting:
    """The row of the table named ``name`` (``graph_result_ttl``, ``--metrics-port``)."""
    return _BY_NAME[name]


ENV_PREFIX = setting("graph_key_prefix").env
ENV_REDIS_URL = setting("graph_redis_url").env
ENV_REDIS_OPTIONS = setting("graph_redis_transport_options").env
ENV_METRICS_PORT = setting("metrics_port").env
ENV_METRICS_HOST = setting("metrics_host").env
ENV_GRACEFUL_TIMEOUT = setting("graceful_timeout").env
ENV_HEARTBEAT_INTERVAL = setting("heartbeat_interval").env
ENV_RELIABLE_DEFAULTS = setting("reliable_defaults").env
DEFAULT_METRICS_HOST: str = setting("metrics_host").default
DEFAULT_GRACEFUL_TIMEOUT: float = setting("graceful_timeout").default
DEFAULT_HEARTBEAT_INTERVAL: float = setting("heartbeat_interval").default
TTL_INTERVALS = 3  # a worker is gone from the registry after missing this many heartbeats

# Celery settings a graph worker applies unless the app's configuration sets them.
RELIABLE_DEFAULTS: dict[str, Any] = {
    # ack after the node ran, so a message whose worker died is delivered again
    "task_acks_late": True,
    # ...also when only the pool process running it died (OOM kill, segfault)
    "task_reject_on_worker_lost": True,
    # hold one message per pool process: a long node does not pin queued ones
    "worker_prefetch_multiplier": 1,
    # task events (-E), so Flower and `celery events` see graph nodes
    "worker_send_task_events": True,
}


# -- the settings of an app ---------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The graph settings of one app (one attribute per row of ``SETTINGS``, named without
    ``graph_``); ``Settings.from_app(app)`` reads them."""

    key_prefix: str
    redis_url: str
    redis_transport_options: str  # canonical JSON: Settings must be hashable
    result_ttl: int
    run_ttl: int
    store_ttl: int
    cache_size: int
    max_result_bytes: int
    max_input_bytes: int
    max_graph_bytes: int
    queued_lease: float
    running_lease: float
    reconcile_interval: float
    max_lost: int
    max_queue_depth: int
    backpressure_timeout: float
    store_node_results: bool
    eager_successors: bool
    eager_depth: int
    eager_seconds: float

    @property
    def keys(self) -> Keys:
        return Keys(self.key_prefix)

    @property
    def transport_options(self) -> dict[str, Any]:
        return dict(json.loads(self.redis_transport_options))

    @classmethod
    def from_app(cls, app: Any) -> Settings:
        """The settings of ``app`` (``app.conf``, then the environment, then the defaults).

        Cached per app, keyed on everything the reading looks at (the app's configuration
        under every setting's name, the broker and result backend settings, the environment
        variables), so a changed setting is seen at the next call; inside ``pinned(app)``
        (a node delivery), at the first call after the block."""
        if app is None:
            return cls.read(None)
        held = _pinned.held
        if held is not None and held[0] is app:
            return held[1]
        seen = _inputs(app.conf)
        if seen is None:  # not a configuration Celery built: read it every time
            return cls.read(app)
        cached = _cache.get(app)
        if cached is not None and cached[0] == seen:
            return cached[1]
        for _ in range(2):  # twice when the first read loaded a pending configuration
            settings = cls.read(app)
            after = _inputs(app.conf)
            if after == seen:  # nothing changed while it was read
                try:
                    _cache[app] = (copy.deepcopy(seen, {id(_ABSENT): _ABSENT}), settings)
                except Exception:  # a value deepcopy cannot copy: no caching for this app
                    _cache.pop(app, None)
                break
            seen = after
        return settings

    @classmethod
    def read(cls, app: Any) -> Settings:
        """The settings of ``app`` (or of the environment alone for None), read now."""
        conf = app.conf if app is not None else None
        values = {s.field: s.read(conf) for s in SETTINGS}
        if values["redis_url"] is None and conf is not None:
            # the broker's Redis (Sentinel-managed too, with its transport options), else
            # the result backend's
            if scheme_of(conf.broker_url):
                values["redis_url"] = conf.broker_url
                if values["redis_transport_options"] == "{}" and conf.broker_url.startswith(
                    "sentinel://"
                ):
                    options = conf.broker_transport_options or {}
                    values["redis_transport_options"] = setting(
                        "graph_redis_transport_options"
                    ).parse(options, "app.conf.broker_transport_options")
            elif scheme_of(conf.result_backend):
                values["redis_url"] = conf.result_backend
        url = values["redis_url"]
        if url is None:
            raise NoGraphRedis(
                "celery-graph keeps graph state in Redis and found no Redis URL: set "
                f"app.conf.graph_redis_url or {ENV_REDIS_URL} (the broker may be RabbitMQ)"
            )
        options = json.loads(values["redis_transport_options"])
        if url.startswith("sentinel://") and not options.get("master_name"):
            raise ConfigurationError(
                f"graph Redis URL {url!r} names Sentinels: set the master's name in "
                "app.conf.graph_redis_transport_options = {'master_name': '...'}"
            )
        return cls(**values)


class _Pinned(threading.local):
    held: tuple[Any, Settings] | None = None  # (app, its settings) while pinned


_pinned = _Pinned()


@contextmanager
def pinned(app: Any) -> Iterator[Settings]:
    """Within the block, ``Settings.from_app(app)`` on this thread answers the settings read
    on entry without looking at the configuration again. A node delivery asks for them in
    five places (its state, the eager successors' keeper, the result backend twice, the
    metrics), and so does each eager successor it runs, inside its block, Celery's
    task_prerun/postrun included; each look was a measurable part of a step's CPU
    (docs/performance.md). A setting changed meanwhile is seen from the first read after
    the block: the next delivery."""
    settings = Settings.from_app(app)
    outer = _pinned.held
    _pinned.held = (app, settings)
    try:
        yield settings
    finally:
        _pinned.held = outer


# What Settings.read looks at besides the table's own names (conf.broker_url and
# conf.result_backend read these, and an environment variable each).
_CONF_NAMES = (*(s.name for s in SETTINGS), "broker_url", "broker_host", "result_backend")
_CONF_NAMES += ("CELERY_RESULT_BACKEND", "broker_transport_options")
_ENV_NAMES = (*(s.env for s in SETTINGS), "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")
_ABSENT = object()  # a name a configuration map does not hold
_cache: weakref.WeakKeyDictionary[Any, tuple[Any, Settings]] = weakref.WeakKeyDictionary()
_conf_keys: dict[Any, tuple[str, ...]] = {}
_env_keys: dict[Any, tuple[Any, ...]] = {}  # os.environ's encoding of _ENV_NAMES


def _inputs(conf: Any) -> tuple[Any, ...] | None:
    """Everything ``Settings.read`` looks at, as raw values: equal inputs, equal settings.

    Read from the configuration's maps under the keys Celery's own lookup tries (a Django
    namespace's ``CELERY_`` prefix and old setting names included): several times faster
    than ``conf.get``, whose misses raise a KeyError per map, and most graph settings are
    missing. None when the configuration is not the ChainMap Celery builds."""
    try:
        maps = conf.maps
        translation = (conf.prefix, conf._keys, conf.key_t)
        keys = _conf_keys.get(translation)
        if keys is None:
            # every key Celery's lookup may try, once: equal values there, equal lookups
            keys = tuple(
                dict.fromkeys(conf._key(k) for name in _CONF_NAMES for k in conf._to_keys(name))
            )
            _conf_keys[translation] = keys
    except (AttributeError, TypeError):
        return None
    return (keys, tuple(m.get(k, _ABSENT) for m in maps for k in keys), _environment())


def _environment() -> tuple[Any, ...]:
    """The environment variables ``Settings.read`` looks at, raw: equal raw values, equal
    values. ``os.environ.get`` raises and catches a KeyError inside for every variable that
    is not set (most of these), which made this most of the time a settings lookup took
    (five in each node delivery); ``os.environ`` keeps the raw values in a dict that every
    change through it updates (CPython's ``os._Environ._data``), so this looks the names
    up there as ``os.environ`` encodes them, and falls back to ``os.environ.get``."""
    data = getattr(os.environ, "_data", None)
    encode = getattr(os.environ, "encodekey", None)
    if not isinstance(data, dict) or encode is None:
        return tuple(map(os.environ.get, _ENV_NAMES))
    names = _env_keys.get(encode)
    if names is None:
        names = _env_keys[encode] = tuple(map(encode, _ENV_NAMES))
    return tuple(map(data.get, names))


# -- worker settings ----------------------------------------------------------------------


@dataclass
class WorkerOptions:
    """What ``graph-worker`` and every ``celery worker`` of an app using celery-graph add."""

    key_prefix: str | None = None
    redis_url: str | None = None
    metrics_port: int | None = None
    graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT
    metrics_host: str = DEFAULT_METRICS_HOST

    @classmethod
    def from_env(cls) -> WorkerOptions:
        return cls(
            metrics_port=setting("metrics_port").read_env(),
            graceful_timeout=setting("graceful_timeout").read_env(),
            metrics_host=setting("metrics_host").read_env(),
        )


def reliable_defaults_wanted() -> bool:
    """True when the worker applies RELIABLE_DEFAULTS (``graph-worker`` sets this)."""
    return bool(setting("reliable_defaults").read_env())


def heartbeat_interval() -> float:
    """Seconds between a worker's registry heartbeats."""
    return float(setting("heartbeat_interval").read_env())


def registry_ttl(interval: float | None = None) -> int:
    """Seconds a worker's registry entry outlives its last heartbeat."""
    return max(1, round((interval or heartbeat_interval()) * TTL_INTERVALS))


# -- the docs -----------------------------------------------------------------------------


def _shown(s: Setting) -> str:
    if s.shown:
        return s.shown
    value = s.default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = f'`"{value}"`' if isinstance(value, str) else f"`{value}`"
    unit = "s" if "seconds" in s.kind.rule else s.unit
    if unit == "s" and value >= 86400 and value % 86400 == 0:
        days = value // 86400
        return f"{text} s ({days} day{'s' if days > 1 else ''})"
    if unit == "bytes" and value % (1 << 20) == 0:
        return f"{text} bytes ({value >> 20} MiB)"
    return f"{text} {unit}".rstrip()


def _table(header: str, rows: Iterable[Setting], names: Callable[[Setting], list[str]]) -> str:
    lines = [f"| {header} | default | accepts | what it does |", "|---|---|---|---|"]
    for s in rows:
        cell = "<br>".join(f"`{name}`" for name in names(s))
        lines.append(f"| {cell} | {_shown(s)} | {s.kind.rule} | {s.doc} |")
    return "\n".join(lines) + "\n"


def settings_table() -> str:
    """The Markdown table of ``SETTINGS`` that docs/configuration.md shows."""
    return _table("Celery setting<br>environment variable", SETTINGS, lambda s: [s.name, s.env])


def worker_settings_table() -> str:
    """The Markdown table of ``WORKER_SETTINGS`` that docs/configuration.md shows."""
    header = "`celery worker` option<br>environment variable"
    return _table(header, WORKER_SETTINGS, lambda s: [s.flag, s.env] if s.flag else [s.env])
