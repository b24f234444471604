"""``MODULE:ATTR`` references: the one way celery-graph imports an object it is given by
name (a flow for the CLI, the dashboard and a ``run_graph`` message that must rebuild
its graph). Imported from the current directory, like ``celery -A``."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from .errors import ConfigurationError


def split_ref(ref: Any, what: str | None = None) -> tuple[str, str]:
    """(module, attribute) of ``ref``; a ConfigurationError (prefixed by ``what``) unless
    it is ``MODULE:ATTR`` with an importable module (not ``__main__``)."""
    prefix = f"{what}: " if what else ""
    module, sep, attr = ref.partition(":") if isinstance(ref, str) else ("", "", "")
    if not sep or not module or not attr:
        raise ConfigurationError(
            f"{prefix}{ref!r} is not MODULE:FLOW (e.g. 'celery_graph.examples.etl:flow')"
        )
    if module == "__main__":
        raise ConfigurationError(
            f"{prefix}{ref!r} names __main__, which another process cannot import: define "
            "the flow in a module and name that module"
        )
    return module, attr


def import_ref(ref: str, what: str | None = None) -> Any:
    """The object at ``MODULE:ATTR`` (the attribute may be dotted); a ConfigurationError
    saying what is wrong (prefixed by ``what``) otherwise."""
    prefix = f"{what}: " if what else ""
    module, attr = split_ref(ref, what)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module)
    except Exception as exc:
        raise ConfigurationError(
            f"{prefix}cannot import module {module!r}: {type(exc).__name__}: {exc}"
        ) from exc
    return attribute(obj, module, attr, prefix)


def attribute(obj: Any, module: str, attr: str, prefix: str = "") -> Any:
    """``attr`` (dotted) of module ``obj``; a ConfigurationError naming it if missing."""
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigurationError(f"{prefix}module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj
