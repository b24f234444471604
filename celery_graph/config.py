"""Settings, read from the Celery app's config with environment fallbacks.

| Celery setting            | environment variable          | default                    |
|---------------------------|-------------------------------|----------------------------|
| graph_key_prefix          | CELERY_GRAPH_KEY_PREFIX       | "celery_graph"             |
| graph_redis_url           | CELERY_GRAPH_REDIS_URL        | the broker URL if Redis,   |
|                           |                               | else the result backend's  |
| graph_redis_transport_options | CELERY_GRAPH_REDIS_TRANSPORT_OPTIONS (JSON) | {}   |
| graph_result_ttl          | CELERY_GRAPH_RESULT_TTL       | 86400 s (kept after a run) |
| graph_run_ttl             | CELERY_GRAPH_RUN_TTL          | 604800 s (longest run)     |
| graph_store_ttl           | CELERY_GRAPH_STORE_TTL        | 604800 s (sliding)         |
| graph_cache_size          | CELERY_GRAPH_CACHE_SIZE       | 256 graphs per process     |
| graph_max_result_bytes    | CELERY_GRAPH_MAX_RESULT_BYTES | 16 MiB per node result     |
| graph_queued_lease        | CELERY_GRAPH_QUEUED_LEASE     | 30 s: a published node not |
|                           |                               | started by then is re-sent |
|                           |                               | (when its queue is empty)  |
| graph_running_lease       | CELERY_GRAPH_RUNNING_LEASE    | 15 s: a running node whose |
|                           |                               | worker stops renewing it   |
|                           |                               | is re-sent after this      |
| graph_reconcile_interval  | CELERY_GRAPH_RECONCILE_INTERVAL | 2 s between sweeps       |
| graph_max_lost            | CELERY_GRAPH_MAX_LOST         | 5: a node whose worker dies|
|                           |                               | more often fails the run   |
| graph_max_queue_depth     | CELERY_GRAPH_MAX_QUEUE_DEPTH  | 0 (no backpressure)        |
| graph_backpressure_timeout| CELERY_GRAPH_BACKPRESSURE_TIMEOUT | 30 s                   |

An explicit Celery setting wins over the environment variable.

Worker options (``graph-worker`` flags, read from the environment by the worker's
bootstep and by its pool processes):

| environment variable            | default | meaning                              |
|---------------------------------|---------|--------------------------------------|
| CELERY_GRAPH_METRICS_PORT       | off     | serve /metrics and /healthz on this port |
| CELERY_GRAPH_METRICS_HOST       | 0.0.0.0 | address the metrics server listens on |
| CELERY_GRAPH_GRACEFUL_TIMEOUT   | 60 s    | bounded warm shutdown on SIGTERM      |
| CELERY_GRAPH_HEARTBEAT_INTERVAL | 5 s     | worker registry heartbeat             |
| CELERY_GRAPH_RELIABLE_DEFAULTS  | off     | "1": apply RELIABLE_DEFAULTS (graph-worker sets it) |

The same options are ``celery worker`` flags (``--metrics-port``, ``--metrics-host``,
``--graceful-timeout``, ``--key-prefix``, ``--redis-url``) on every app that uses
celery-graph; a flag sets its environment variable, so pool processes and a worker
re-executed by ``-D`` see it too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError, NoGraphRedis
from .keys import DEFAULT_PREFIX, Keys, check_prefix

ENV_PREFIX = "CELERY_GRAPH_KEY_PREFIX"
ENV_REDIS_URL = "CELERY_GRAPH_REDIS_URL"
ENV_REDIS_OPTIONS = "CELERY_GRAPH_REDIS_TRANSPORT_OPTIONS"
ENV_METRICS_PORT = "CELERY_GRAPH_METRICS_PORT"
ENV_GRACEFUL_TIMEOUT = "CELERY_GRAPH_GRACEFUL_TIMEOUT"
ENV_HEARTBEAT_INTERVAL = "CELERY_GRAPH_HEARTBEAT_INTERVAL"
ENV_METRICS_HOST = "CELERY_GRAPH_METRICS_HOST"
ENV_RELIABLE_DEFAULTS = "CELERY_GRAPH_RELIABLE_DEFAULTS"
DEFAULT_METRICS_HOST = "0.0.0.0"
# Upper bounds (seconds) of the node- and run-duration histograms' buckets.
TASK_DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
)
RUN_DURATION_BUCKETS = (
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    21600.0,
    86400.0,
)
DEFAULT_GRACEFUL_TIMEOUT = 60.0
DEFAULT_HEARTBEAT_INTERVAL = 5.0
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


def _same(value: Any) -> Any:
    return value


def _setting(app: Any, name: str, env: str, default: Any, cast: Any = str) -> Any:
    value = app.conf.get(name) if app is not None else None
    source = f"app.conf.{name}"
    if value is None:
        value = os.environ.get(env)
        source = f"environment variable {env}"
    if value is None:
        return default
    try:
        return cast(value)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{source} = {value!r} is not a valid {cast.__name__}") from exc


# Schemes of a graph Redis URL: one server, a Redis Cluster (any of its nodes, comma
# separated), or Sentinels (Celery's spelling: "sentinel://h1:26379;sentinel://h2:26379",
# the master named by the transport option "master_name").
SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "sentinel")


def scheme_of(url: Any) -> str | None:
    if not isinstance(url, str) or "://" not in url:
        return None
    scheme = url.split("://", 1)[0]
    return scheme if scheme in SCHEMES else None


def _options(value: Any, source: str) -> str:
    """Transport options as canonical JSON (Settings must be hashable)."""
    if value is None:
        return "{}"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ConfigurationError(f"{source} is not a JSON object: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigurationError(f"{source} must be a dict, got {type(value).__name__}")
    try:
        return json.dumps(value, sort_keys=True)
    except TypeError as exc:
        raise ConfigurationError(f"{source}: {exc}") from exc


@dataclass(frozen=True)
class Settings:
    key_prefix: str
    redis_url: str
    result_ttl: int
    run_ttl: int
    store_ttl: int
    cache_size: int
    max_result_bytes: int = 16 * 1024 * 1024
    max_queue_depth: int = 0
    backpressure_timeout: float = 30.0
    queued_lease: float = 30.0
    running_lease: float = 15.0
    reconcile_interval: float = 2.0
    max_lost: int = 5
    # graph_redis_transport_options (Sentinel: master_name, sentinel_kwargs...), as JSON
    redis_options: str = "{}"

    @property
    def keys(self) -> Keys:
        return Keys(self.key_prefix)

    @property
    def transport_options(self) -> dict[str, Any]:
        return dict(json.loads(self.redis_options))

    @classmethod
    def from_app(cls, app: Any) -> Settings:
        prefix = check_prefix(_setting(app, "graph_key_prefix", ENV_PREFIX, DEFAULT_PREFIX))
        url = _setting(app, "graph_redis_url", ENV_REDIS_URL, None)
        options = _options(
            _setting(app, "graph_redis_transport_options", ENV_REDIS_OPTIONS, None, _same),
            "graph_redis_transport_options",
        )
        if url is None:
            # the broker's Redis (Sentinel-managed too, with its transport options), else
            # the result backend's
            if scheme_of(app.conf.broker_url):
                url = app.conf.broker_url
                if options == "{}" and url.startswith("sentinel://"):
                    options = _options(
                        app.conf.broker_transport_options, "the broker's transport options"
                    )
            elif scheme_of(app.conf.result_backend):
                url = app.conf.result_backend
        if url is None:
            raise NoGraphRedis(
                "celery-graph keeps graph state in Redis and found no Redis URL: set "
                f"app.conf.graph_redis_url or {ENV_REDIS_URL} (the broker may be RabbitMQ)"
            )
        if not scheme_of(url):
            raise ConfigurationError(
                f"graph Redis URL {url!r} must start with one of "
                + ", ".join(f"{s}://" for s in SCHEMES)
            )
        if url.startswith("sentinel://") and not json.loads(options).get("master_name"):
            raise ConfigurationError(
                f"graph Redis URL {url!r} names Sentinels: set the master's name in "
                "app.conf.graph_redis_transport_options = {'master_name': '...'}"
            )
        settings = cls(
            key_prefix=prefix,
            redis_url=url,
            redis_options=options,
            result_ttl=_setting(app, "graph_result_ttl", "CELERY_GRAPH_RESULT_TTL", 86400, int),
            run_ttl=_setting(app, "graph_run_ttl", "CELERY_GRAPH_RUN_TTL", 7 * 86400, int),
            store_ttl=_setting(app, "graph_store_ttl", "CELERY_GRAPH_STORE_TTL", 7 * 86400, int),
            cache_size=_setting(app, "graph_cache_size", "CELERY_GRAPH_CACHE_SIZE", 256, int),
            max_result_bytes=_setting(
                app, "graph_max_result_bytes", "CELERY_GRAPH_MAX_RESULT_BYTES", 16 << 20, int
            ),
            queued_lease=_setting(
                app, "graph_queued_lease", "CELERY_GRAPH_QUEUED_LEASE", 30.0, float
            ),
            running_lease=_setting(
                app, "graph_running_lease", "CELERY_GRAPH_RUNNING_LEASE", 15.0, float
            ),
            reconcile_interval=_setting(
                app, "graph_reconcile_interval", "CELERY_GRAPH_RECONCILE_INTERVAL", 2.0, float
            ),
            max_lost=_setting(app, "graph_max_lost", "CELERY_GRAPH_MAX_LOST", 5, int),
            max_queue_depth=_setting(
                app, "graph_max_queue_depth", "CELERY_GRAPH_MAX_QUEUE_DEPTH", 0, int
            ),
            backpressure_timeout=_setting(
                app, "graph_backpressure_timeout", "CELERY_GRAPH_BACKPRESSURE_TIMEOUT", 30.0, float
            ),
        )
        if settings.max_queue_depth < 0 or settings.backpressure_timeout < 0:
            raise ConfigurationError(
                "graph_max_queue_depth and graph_backpressure_timeout must not be negative"
            )
        for name in (
            "result_ttl",
            "run_ttl",
            "store_ttl",
            "cache_size",
            "max_result_bytes",
            "max_lost",
        ):
            if getattr(settings, name) <= 0:
                raise ConfigurationError(f"graph_{name} must be a positive integer")
        for name in ("queued_lease", "running_lease", "reconcile_interval"):
            if getattr(settings, name) <= 0:
                raise ConfigurationError(f"graph_{name} must be a positive number of seconds")
        return settings


# -- worker options -----------------------------------------------------------------


@dataclass
class WorkerOptions:
    """What ``graph-worker`` adds to ``celery worker``."""

    key_prefix: str | None = None
    redis_url: str | None = None
    metrics_port: int | None = None
    graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT
    metrics_host: str = DEFAULT_METRICS_HOST

    @classmethod
    def from_env(cls) -> WorkerOptions:
        env = os.environ
        port = env.get(ENV_METRICS_PORT) or None
        timeout = env.get(ENV_GRACEFUL_TIMEOUT) or None
        try:
            opts = cls(
                metrics_port=int(port) if port is not None else None,
                graceful_timeout=float(timeout)
                if timeout is not None
                else DEFAULT_GRACEFUL_TIMEOUT,
                metrics_host=env.get(ENV_METRICS_HOST) or DEFAULT_METRICS_HOST,
            )
        except ValueError as exc:
            raise ConfigurationError(
                f"{ENV_METRICS_PORT}={port!r} / {ENV_GRACEFUL_TIMEOUT}={timeout!r}: {exc}"
            ) from exc
        if opts.metrics_port is not None and not 0 < opts.metrics_port < 65536:
            raise ConfigurationError(f"metrics port {opts.metrics_port} is not in 1-65535")
        if opts.graceful_timeout < 0:
            raise ConfigurationError("the graceful timeout must be 0 or more seconds")
        return opts


def reliable_defaults_wanted() -> bool:
    """True when the worker applies RELIABLE_DEFAULTS (``graph-worker`` sets this)."""
    return os.environ.get(ENV_RELIABLE_DEFAULTS, "") not in ("", "0", "false", "no")


def heartbeat_interval() -> float:
    raw = os.environ.get(ENV_HEARTBEAT_INTERVAL)
    value = float(raw) if raw else DEFAULT_HEARTBEAT_INTERVAL
    if value <= 0:
        raise ConfigurationError(f"{ENV_HEARTBEAT_INTERVAL} must be positive, got {raw!r}")
    return value


def registry_ttl(interval: float | None = None) -> int:
    """Seconds a worker's registry entry outlives its last heartbeat."""
    return max(1, round((interval or heartbeat_interval()) * TTL_INTERVALS))
