"""A node function's parameters, read once per function: for ``bind`` checks, Celery's
Task API on a bare node, and the compiler's declarations."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from ..model import Param


@functools.lru_cache(maxsize=4096)
def signature_of(fn: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(fn).parameters)


@functools.lru_cache(maxsize=4096)
def parameters(fn: Callable[..., Any]) -> tuple[Param, ...]:
    """The parameters of ``fn`` as the compiler reads them."""
    return tuple(
        Param(p.name, p.kind.name, p.default is not inspect.Parameter.empty)
        for p in signature_of(fn).values()
    )
