"""What the dashboard checks before a request reaches a view, in plain Python (the web
layer, ``server.py``, applies it):

- the ``Host`` a request was sent to: loopback, the address the server is bound to, or a
  name given with ``--allowed-host``. A page on another site whose name was made to
  resolve to 127.0.0.1 (DNS rebinding) sends its own name, and is refused;
- the ``Origin`` of an action: the dashboard's own, or an allowed name (behind a proxy);
- basic auth credentials, compared as bytes (a password may be any UTF-8 text);
- how fast one client may guess them: after a wrong password each further attempt from
  that client waits longer (doubling up to a bound), without holding up anyone else;
- whether an address exposes the page beyond this machine (``exposed``), which needs
  credentials or an explicit ``--no-auth``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import re
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import UsageError

ANY_HOST = "*"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_WILDCARDS = ("", "0.0.0.0", "::")


def _address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return None


def is_loopback(name: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    name = name.lower().rstrip(".")
    address = _address(name)
    return name == "localhost" or (address is not None and address.is_loopback)


def exposed(host: str) -> bool:
    """True when serving on ``host`` lets other machines reach the page."""
    return not is_loopback(host)


def check_exposure(host: str, credentials: Credentials, no_auth: bool) -> None:
    """A page reachable from other machines asks for credentials, unless ``no_auth``
    says it is meant to be open: UsageError otherwise, before anything is served."""
    if no_auth and credentials.required:
        raise UsageError("--no-auth and --basic-auth contradict each other: give one of them")
    if exposed(host) and not credentials.required and not no_auth:
        raise UsageError(
            f"--host {host} exposes the dashboard to other machines: give --basic-auth "
            "USER:PASSWORD (or CELERY_GRAPH_UI_BASIC_AUTH), or --no-auth to serve it "
            "without authentication on purpose"
        )


def hostname(host: str | None) -> str | None:
    """The name in a ``Host`` header or an address (``name[:port]``, ``[v6][:port]``),
    lowercase, without the port or a trailing dot; None when there is none."""
    if not host:
        return None
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else None
    if host.count(":") > 1:  # a bare IPv6 address (a bind address, not a header)
        return host
    return host.partition(":")[0].rstrip(".") or None


def parse_allowed_hosts(values: Iterable[str]) -> tuple[str, ...]:
    """``--allowed-host`` values (each may hold several, separated by commas or spaces):
    host names, IP addresses, or ``*`` for any host. UsageError for anything else."""
    out: list[str] = []
    for value in values:
        for item in re.split(r"[,\s]+", value.strip()):
            if not item:
                continue
            if item == ANY_HOST:
                out.append(ANY_HOST)
                continue
            name = _allowed_name(item)
            if name is None:
                raise UsageError(
                    f"--allowed-host {item!r}: expected a host name (dash.example.com), an IP "
                    "address, or * for any host"
                )
            out.append(name)
    return tuple(dict.fromkeys(out))


def _allowed_name(item: str) -> str | None:
    """The host name of an ``--allowed-host`` item (``name``, ``name:port``, an IPv4
    address, an IPv6 one, bare or in brackets with a port), or None."""
    item = item.lower()
    if _address(item) is not None:  # an address, IPv6 ones bare or in brackets
        return item.strip("[]")
    found = re.fullmatch(r"(\[[0-9a-f:.]+\]|[^:\[\]]+)(:[0-9]{1,5})?", item)
    if found is None:
        return None
    name = found.group(1).strip("[]").rstrip(".")
    return name if _address(name) is not None or _NAME.match(name) else None


class HostPolicy:
    """Which ``Host`` and ``Origin`` headers the dashboard answers."""

    def __init__(self, bound: str, allowed: Iterable[str] = ()) -> None:
        self.allowed = parse_allowed_hosts(allowed)
        self.any = ANY_HOST in self.allowed
        names = {n for n in self.allowed if n != ANY_HOST}
        bound_name = hostname(bound)
        if bound_name and bound_name not in _WILDCARDS:
            names.add(bound_name)
        self.names = frozenset(names)
        self.proxied = frozenset(n for n in self.allowed if n != ANY_HOST)

    def allows_host(self, host: str | None) -> bool:
        name = hostname(host)
        if name is None:
            return False
        return self.any or is_loopback(name) or name in self.names

    def refusal(self, host: str | None) -> str:
        """Why a request for ``host`` is refused, and what to do about it."""
        name = hostname(host)
        if name is None:
            return "a request without a Host header is refused"
        return (
            f"requests for host {name!r} are refused (a page of another site, DNS "
            f"rebinding?); to serve the dashboard under that name, start it with "
            f"--allowed-host {name}"
        )

    def allows_origin(self, origin: str, host: str | None) -> bool:
        """An action's ``Origin``: the page's own (the request's allowed ``Host``), or a
        name given with ``--allowed-host`` (a proxy in front that changes ``Host``)."""
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        if host and parts.netloc.lower() == host.strip().lower():
            return self.allows_host(host)
        return parts.hostname.rstrip(".") in self.proxied


class Credentials:
    """Basic auth pairs (``user:password``, comma separated, like Flower's option),
    compared as UTF-8 bytes with every pair, in constant time."""

    def __init__(self, value: str | None) -> None:
        self.pairs: list[tuple[bytes, bytes]] | None = None
        if not value:
            return
        pairs = []
        for entry in value.split(","):
            user, sep, password = entry.partition(":")
            if not sep or not user or not password:
                raise UsageError(
                    "--basic-auth: expected USER:PASSWORD (several separated by commas), got "
                    f"an entry {'without a colon' if not sep else 'with an empty user or password'}"
                )
            pairs.append((user.encode(), password.encode()))
        self.pairs = pairs

    @property
    def required(self) -> bool:
        return self.pairs is not None

    def check(self, header: str | None) -> bool:
        """True when ``header`` (an ``Authorization`` header) names one of the pairs."""
        if self.pairs is None:
            return True
        scheme, _, encoded = (header or "").strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):  # not base64, or not ASCII at all
            return False
        user, _, password = decoded.partition(b":")
        ok = False
        for u, p in self.pairs:  # every pair, no early exit
            ok |= hmac.compare_digest(u, user) & hmac.compare_digest(p, password)
        return ok


@dataclass
class _Client:
    failures: int = 0
    last: float = 0.0  # monotonic time of the last failure
    next: float = 0.0  # when the next attempt of this client may be checked


class LoginThrottle:
    """Slows down guessing, per client: after ``n`` wrong credentials in a row, each
    further attempt from that client is checked ``base * 2**(n-1)`` seconds (at most
    ``cap``) after the one before, so attempts sent at once queue up instead of running
    in parallel; one that would wait more than ``max_wait`` is refused at once (429). A
    right password clears the client's record, and so do ``forget`` seconds without a
    failure. Waiting is a coroutine sleep: other clients are not held up."""

    def __init__(
        self,
        base: float = 0.5,
        cap: float = 10.0,
        max_wait: float = 30.0,
        forget: float = 900.0,
        clients: int = 10_000,
    ) -> None:
        self.base, self.cap, self.max_wait, self.forget = base, cap, max_wait, forget
        self.clients = clients
        self._seen: OrderedDict[str, _Client] = OrderedDict()

    def delay(self, failures: int) -> float:
        return min(self.base * 2 ** max(failures - 1, 0), self.cap)

    def wait(self, client: str) -> float | None:
        """Seconds this attempt of ``client`` waits before its credentials are checked
        (its turn is taken now); None when that would exceed ``max_wait``."""
        record = self._seen.get(client)
        now = time.monotonic()
        if record is None:
            return 0.0
        if now - record.last > self.forget:
            del self._seen[client]
            return 0.0
        start = max(now, record.next)
        if start - now > self.max_wait:
            return None
        record.next = start + self.delay(record.failures)
        return start - now

    async def admit(self, client: str) -> bool:
        """Wait for this client's turn; False: too many attempts queued, refuse it."""
        seconds = self.wait(client)
        if seconds is None:
            return False
        if seconds > 0:
            await asyncio.sleep(seconds)
        return True

    def failed(self, client: str) -> None:
        now = time.monotonic()
        record = self._seen.pop(client, None) or _Client()
        record.failures += 1
        record.last = now
        record.next = max(record.next, now + self.delay(record.failures))
        self._seen[client] = record  # most recent last
        while len(self._seen) > self.clients:
            self._seen.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._seen.pop(client, None)

    def retry_after(self, client: str) -> int:
        """Seconds until ``client`` may try again (for a 429's ``Retry-After``)."""
        record = self._seen.get(client)
        return max(1, round((record.next - time.monotonic()) if record else 1))
