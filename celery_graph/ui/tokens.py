"""Bearer tokens of the trigger API (``POST /api/flows/<name>/runs`` from another system:
a CI job, a webhook relay, a cron on another host), in plain Python.

A token comes from ``--api-token TOKEN[=FLOW,FLOW...]`` (repeatable) or a file of them
(``--api-tokens-file``: one token a line, optionally followed by the flows it may start;
blank lines and ``#`` comments are skipped). A token without flows may start every flow
the dashboard offers; one with flows, only those. Tokens are kept as SHA-256 digests and
compared in constant time against every one; a token shorter than 24 characters is
refused when the dashboard starts (a guessable token is worse than none).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

MIN_TOKEN_CHARS = 24


@dataclass(frozen=True)
class ApiToken:
    """One token, as its digest, and the flows it may start (empty: all)."""

    digest: bytes
    flows: frozenset[str]
    label: str  # where it came from, for messages: "--api-token #1", "tokens.txt:3"

    def allows(self, flow: str) -> bool:
        return not self.flows or flow in self.flows


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _token(token: str, flows: Iterable[str], label: str) -> ApiToken:
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise UsageError(
            f"{label}: an API token is at least {MIN_TOKEN_CHARS} characters without spaces "
            "(make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    names = frozenset(f.strip() for f in flows if f.strip())
    return ApiToken(_digest(token), names, label)


class ApiTokens:
    """The tokens the dashboard accepts; none unless given (the trigger API is off)."""

    def __init__(self, tokens: Iterable[ApiToken] = ()) -> None:
        self.tokens = tuple(tokens)

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    @classmethod
    def parse(cls, values: Iterable[str] = (), files: Iterable[str] = ()) -> ApiTokens:
        """From ``--api-token`` values (``TOKEN`` or ``TOKEN=FLOW,FLOW``) and token files;
        UsageError naming the value or the file and line that is wrong."""
        tokens = []
        for i, value in enumerate(values, 1):
            token, _, flows = value.partition("=")
            tokens.append(_token(token.strip(), flows.split(","), f"--api-token #{i}"))
        for name in files:
            try:
                lines = Path(name).read_text().splitlines()
            except OSError as exc:
                raise UsageError(f"--api-tokens-file {name}: {exc.strerror or exc}") from exc
            for n, line in enumerate(lines, 1):
                words = line.split("#", 1)[0].split()
                if words:
                    tokens.append(_token(words[0], words[1:], f"{name}:{n}"))
        return cls(tokens)

    def match(self, presented: str) -> ApiToken | None:
        """The token ``presented`` is, or None; every token is compared (no early exit)."""
        digest = _digest(presented)
        found = None
        for token in self.tokens:
            if hmac.compare_digest(token.digest, digest):
                found = token
        return found
