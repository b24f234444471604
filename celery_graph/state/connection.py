"""Redis clients for graph state, and the one place Redis errors become celery-graph errors.

redis-py is imported when the first client is made, not with ``celery_graph``: a process
that declares graph tasks but never talks to Redis does not pay for it (about 0.1 s).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from types import ModuleType
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from ..config import Settings
from ..errors import ConfigurationError, StorePermissionDenied, StoreUnavailable

T = TypeVar("T")


def redis_errors() -> ModuleType:
    """redis-py's exceptions (``redis.exceptions``). Where a redis-py error is caught, it
    was raised by redis-py, so the import is already done: ``except
    redis_errors().ResponseError`` costs nothing."""
    import redis.exceptions

    return redis.exceptions


def unavailable() -> tuple[type[Exception], ...]:
    """The errors of a Redis that could not be reached, did not answer in time, or is
    between primaries (a cluster slot moving, a Sentinel or Cluster failover, a replica not
    yet promoted, a server still loading its data): the operation may be retried."""
    rexc = redis_errors()
    return (
        rexc.ConnectionError,
        rexc.TimeoutError,
        rexc.ClusterDownError,
        rexc.TryAgainError,
        rexc.MasterDownError,
        rexc.ReadOnlyError,
        rexc.SlotNotCoveredError,
        rexc.RedisClusterException,
    )


# A blocking wait lasts at most this long per call; the waiting connection's socket
# timeout is longer, so redis-py never cuts a wait short.
WAIT_SLICE = 5.0


# A plain client's MOVED reply: redis-py 6 raises MovedError, 4.x and 5.x (Celery 5.3 and
# 5.4 need redis-py < 6) a ResponseError "MOVED <slot> <host:port>", which a pipeline
# prefixes with "Command # <n> (<command>) of pipeline caused error: ".
MOVED_REPLY = re.compile(r"(?:^|: )MOVED \d+ \S+$")


def _moved(exc: Exception) -> bool:
    return isinstance(exc, redis_errors().MovedError) or bool(MOVED_REPLY.search(str(exc)))


@contextmanager
def translating(what: str) -> Iterator[None]:
    """Turn redis-py's connection and timeout errors into StoreUnavailable, a command the
    server's ACL refuses into StorePermissionDenied, and a cluster node's MOVED into the
    ConfigurationError that names the cluster URL."""
    try:
        yield
    except redis_errors().NoPermissionError as exc:
        raise StorePermissionDenied(
            f"the graph Redis refused {what}: {exc}; its user needs every command on the "
            "keys under the key prefix (ACL SETUSER <user> ~<prefix>:* +@all, see "
            "docs/security.md)"
        ) from exc
    except unavailable() as exc:
        raise StoreUnavailable(
            f"Redis unreachable while {what}: {exc}; check graph_redis_url / "
            "CELERY_GRAPH_REDIS_URL and that the server is up"
        ) from exc
    except redis_errors().ResponseError as exc:
        if not _moved(exc):
            raise
        raise ConfigurationError(
            f"the graph Redis answered MOVED while {what}: it is a Redis Cluster node; "
            "name the cluster in graph_redis_url as redis+cluster://host:port[,host:port]"
        ) from exc


def translated(what: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` under :func:`translating`."""
    with translating(what):
        return fn()


def client_for(settings: Settings, socket_timeout: float = 30) -> Any:
    """The client for graph state (bytes replies, bounded socket waits): one server
    (``redis://``, ``rediss://``, ``unix://``), a Redis Cluster (``redis+cluster://`` or
    ``rediss+cluster://host:port[,host:port...]``), or the primary that Sentinels name
    (``sentinel://host:port[;sentinel://host:port...]`` with the transport option
    ``master_name``; the client follows a failover)."""
    url = settings.redis_url
    timeouts = {"socket_timeout": socket_timeout, "socket_connect_timeout": 10}
    scheme = url.split("://", 1)[0]
    if scheme.endswith("+cluster"):
        return _cluster(url, scheme.startswith("rediss"), timeouts)
    if scheme == "sentinel":
        return _sentinel(url, settings.transport_options, timeouts)
    import redis

    return redis.Redis.from_url(url, health_check_interval=30, **timeouts)


def pooled_connection(pool: Any) -> Any:
    """A connection from a redis-py pool, for commands written and read by hand (the
    caller releases it): redis-py 5.3 and later take no argument, earlier ones a
    command name."""
    try:
        return pool.get_connection()
    except TypeError:  # redis-py before 5.3: get_connection(command_name, *keys)
        return pool.get_connection("EVALSHA")


# an argument longer than this is sent as it is, not copied into the bytes around it (as
# redis-py does, with the same limit)
_COPIED = 6000


def packed(conn: Any, commands: list[tuple[Any, ...]]) -> list[bytes]:
    """``commands`` in the Redis protocol for ``conn.send_packed_command``: the bytes
    redis-py's ``pack_commands`` writes for them, at a quarter of its time (5 against
    18 µs for a completing call with its result backend writes), when every command
    name is one word and every argument a text, bytes, an int or a float, and the
    connection encodes texts as UTF-8, strictly; else redis-py's own."""
    encoder = getattr(conn, "encoder", None)
    if (
        encoder is None
        or encoder.encoding.lower().replace("-", "") != "utf8"
        or encoder.encoding_errors != "strict"
    ):
        return conn.pack_commands(commands)
    chunks: list[bytes] = []
    small: list[bytes] = []
    for command in commands:
        name = command[0]
        if type(name) is not str or " " in name:
            return conn.pack_commands(commands)
        small.append(b"*%d\r\n" % len(command))
        for arg in command:
            kind = type(arg)
            if kind is str:
                arg = arg.encode()
            elif kind is int or kind is float:
                arg = repr(arg).encode()
            elif kind is not bytes:  # bool, memoryview, a subclass...: redis-py decides
                return conn.pack_commands(commands)
            if len(arg) > _COPIED:
                small.append(b"$%d\r\n" % len(arg))
                chunks += (b"".join(small), arg)
                small = [b"\r\n"]
            else:
                small.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    chunks.append(b"".join(small))
    return chunks


def one_server(client: Any) -> bool:
    """Is ``client`` a client of one server (a URL's, or the primary Sentinels name), whose
    pipelines run in order on one connection? Not a Redis Cluster's."""
    return getattr(client, "connection_pool", None) is not None


def same_server(client: Any, params: dict[str, Any]) -> bool:
    """Does a plain ``client`` (one server: not Cluster, not Sentinel) talk to the server
    and database that redis-py connection ``params`` name (a connection pool's keyword
    arguments, ``connection_class`` included), as the same user over the same kind of
    connection? Names must be equal as given: "localhost" is not "127.0.0.1" here."""
    pool: Any = getattr(client, "connection_pool", None)
    if type(pool).__name__ != "ConnectionPool":
        return False
    import redis

    if pool.connection_class is not params.get("connection_class", redis.Connection):
        return False
    mine = pool.connection_kwargs
    return all(
        str(mine.get(name) or "") == str(params.get(name) or "")
        for name in ("host", "port", "path", "db", "username", "password")
    )


def wait_client_for(settings: Settings) -> Any:
    """A separate client for blocking waits (BLMOVE), with a socket timeout above the slice."""
    return client_for(settings, socket_timeout=WAIT_SLICE + 10)


def _cluster(url: str, tls: bool, timeouts: dict[str, Any]) -> Any:
    from redis.cluster import ClusterNode, RedisCluster

    nodes: list[ClusterNode] = []
    auth: dict[str, Any] = {}
    for part in url.split("://", 1)[1].split(","):
        parsed = urlsplit(f"redis://{part}")
        if parsed.password is not None:
            auth = {
                "username": unquote(parsed.username or "") or None,
                "password": unquote(parsed.password),
            }
        if parsed.path not in ("", "/", "/0"):
            raise ConfigurationError(f"graph Redis URL {url!r}: a Redis Cluster has only db 0")
        nodes.append(ClusterNode(parsed.hostname or "127.0.0.1", parsed.port or 6379))
    with translating("connecting to the Redis Cluster"):  # it reads the slots at once
        return RedisCluster(startup_nodes=nodes, ssl=tls, **auth, **timeouts)


def _sentinel(url: str, options: dict[str, Any], timeouts: dict[str, Any]) -> Any:
    from redis.sentinel import Sentinel

    hosts: list[tuple[str, int]] = []
    auth: dict[str, Any] = {}
    db = 0
    for part in url.split(";"):
        parsed = urlsplit(part.strip())
        hosts.append((parsed.hostname or "127.0.0.1", parsed.port or 26379))
        if parsed.password is not None:
            auth = {
                "username": unquote(parsed.username or "") or None,
                "password": unquote(parsed.password),
            }
        if parsed.path.strip("/"):
            db = int(parsed.path.strip("/"))
    options = dict(options)
    master = options.pop("master_name")
    sentinel_kwargs = options.pop("sentinel_kwargs", None)
    sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs, **timeouts)
    return sentinel.master_for(master, db=db, **auth, **options, **timeouts)


# A line ``-- @include "name"`` of a script stands for ``lua/lib/name.lua``.
INCLUDE = re.compile(r'^-- @include "([a-z_]+)"[ \t]*$', re.MULTILINE)


@functools.cache
def load_script(name: str) -> str:
    """The text of ``lua/<name>.lua`` (package data) with each ``-- @include "lib"`` line
    replaced by ``lua/lib/<lib>.lua``: a library's own includes come before it, and each
    library comes once; without the functions the script never names (see
    :func:`without_unused`)."""
    return without_unused(resolve_includes(_lua(f"{name}.lua"), f"{name}.lua"))


# A function defined at the top level: from its first line to the first "end" at the
# start of a line (a function's own lines are indented).
FUNCTION = re.compile(r"^local function (\w+)\(.*?^end\n", re.MULTILINE | re.DOTALL)


def without_unused(text: str) -> str:
    """``text`` without the top-level functions that nothing outside them names, directly
    or through the functions it keeps. Redis runs a script's whole text at every call, so
    every function it defines is a closure made per call: a script uses a few of its
    libraries' functions, and the others were a fifth of begin.lua's time in the server
    on its early path (18.5 -> 14.8 µs; on its whole path, 61 µs, within the noise). A
    name mentioned anywhere outside the functions, a comment included, keeps its
    function."""
    bodies = {m.group(1): m.group(0) for m in FUNCTION.finditer(text)}
    if not bodies:
        return text
    named = re.compile(rf"\b(?:{'|'.join(bodies)})\b").findall
    kept = set(named(FUNCTION.sub("", text)))
    todo = list(kept)
    while todo:  # and what the kept ones name
        for name in set(named(bodies[todo.pop()])) - kept:
            kept.add(name)
            todo.append(name)
    return FUNCTION.sub(lambda m: m.group(0) if m.group(1) in kept else "", text)


def _lua(path: str) -> str:
    return (resources.files(__package__) / "lua" / path).read_text()


def resolve_includes(text: str, where: str, seen: set[str] | None = None) -> str:
    """``text`` (the Lua file ``where``) with its includes resolved; ``seen``: the
    libraries already in place."""
    seen = set() if seen is None else seen

    def include(match: re.Match[str]) -> str:
        lib = match.group(1)
        if lib in seen:
            return f"-- (lib/{lib}.lua: above)"
        seen.add(lib)
        try:
            body = _lua(f"lib/{lib}.lua")
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{where} includes lib/{lib}.lua, which does not exist"
            ) from None
        return resolve_includes(body, f"lib/{lib}.lua", seen).rstrip("\n")

    return INCLUDE.sub(include, text)
