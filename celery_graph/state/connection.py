"""Redis clients for graph state, and the one place Redis errors become celery-graph errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any, TypeVar

import redis

from ..errors import StoreUnavailable

T = TypeVar("T")

# Redis could not be reached or did not answer in time: the operation may be retried.
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError)

# A blocking wait lasts at most this long per call; the waiting connection's socket
# timeout is longer, so redis-py never cuts a wait short.
WAIT_SLICE = 5.0


@contextmanager
def translating(what: str) -> Iterator[None]:
    """Turn redis-py's connection and timeout errors into StoreUnavailable."""
    try:
        yield
    except UNAVAILABLE as exc:
        raise StoreUnavailable(
            f"Redis unreachable while {what}: {exc}; check graph_redis_url / "
            "CELERY_GRAPH_REDIS_URL and that the server is up"
        ) from exc


def translated(what: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` under :func:`translating`."""
    with translating(what):
        return fn()


def client_for(url: str) -> Any:
    """The client for graph state: bytes replies, bounded socket waits."""
    return redis.Redis.from_url(
        url, socket_timeout=30, socket_connect_timeout=10, health_check_interval=30
    )


def wait_client_for(url: str) -> Any:
    """A separate client for blocking waits (BLMOVE), with a socket timeout above the slice."""
    return redis.Redis.from_url(url, socket_timeout=WAIT_SLICE + 10, socket_connect_timeout=10)


def load_script(name: str) -> str:
    """The text of ``lua/<name>.lua``, shipped as package data."""
    return (resources.files(__package__) / "lua" / f"{name}.lua").read_text()
