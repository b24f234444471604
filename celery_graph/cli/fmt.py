"""Formatting for the commands' tables: times, durations, aligned columns."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import IO


def timestamp(ts: float | None) -> str:
    """A UTC time, or "-"."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float) -> str:
    """``0.42s``, ``5m03s``, ``2h05m``."""
    if seconds < 60:
        return f"{seconds:.2f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def span(start: float | None, end: float | None) -> str:
    """How long from ``start`` to ``end``; until now with a "+" while not ended."""
    if start is None:
        return "-"
    if end is None:
        return duration(time.time() - start) + "+"
    return duration(end - start)


def table(rows: Sequence[Sequence[str]], out: IO[str]) -> None:
    """Left-aligned columns, two spaces apart; the first row is the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
