"""Finding the Celery app a command works on, the way ``celery -A`` does, and the flow
a command or the dashboard names as ``MODULE:FLOW``."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable
from typing import Any

from celery import Celery, current_app
from celery.app.utils import find_app

from .dsl import Flow
from .errors import ConfigurationError
from .refs import attribute, import_ref


def app_ref(argv: Iterable[str]) -> str | None:
    """The app named by ``-A APP``, ``-AAPP``, ``--app APP`` or ``--app=APP`` in
    ``argv``, else ``$CELERY_APP``."""
    name = os.environ.get("CELERY_APP")
    it = iter(argv)
    for arg in it:
        if arg in ("-A", "--app"):
            name = next(it, None)
        elif arg.startswith("--app="):
            name = arg.split("=", 1)[1]
        elif arg.startswith("-A") and len(arg) > 2:
            name = arg[2:]
    return name


def load_app(ref: str | None, *, set_current: bool = True) -> Any:
    """The Celery app ``ref`` (``module`` or ``module:attr``), imported from the current
    directory like ``celery -A``; without ``ref``, Celery's current app."""
    if not ref:
        return current_app._get_current_object()
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        app = find_app(ref)
    except Exception as exc:
        raise ConfigurationError(
            f"cannot load the Celery app {ref!r} (-A): {_why_not_found(ref, exc)}"
        ) from exc
    if not isinstance(app, Celery):
        raise ConfigurationError(f"-A {ref!r} is a {type(app).__name__}, not a Celery app")
    if set_current:
        app.set_current()
    return app


def _why_not_found(ref: str, exc: Exception) -> str:
    """For ``module:attr`` whose module imports, name the missing attribute (Celery's own
    error then says the whole reference is no module)."""
    module, sep, attr = ref.partition(":")
    if sep and module and attr:
        try:
            obj: Any = importlib.import_module(module)
        except Exception:
            return str(exc)
        try:
            attribute(obj, module, attr)
        except ConfigurationError as missing:
            return str(missing)
    return str(exc)


def import_flow(ref: str, what: str | None = None) -> Flow:
    """The flow at ``MODULE:FLOW`` (attributes may be dotted), imported from the current
    directory; a ConfigurationError saying what is wrong (prefixed by ``what``) otherwise."""
    prefix = f"{what}: " if what else ""
    obj = import_ref(ref, what)
    if not isinstance(obj, Flow):
        raise ConfigurationError(
            f"{prefix}{ref} is a {type(obj).__name__}, not a celery-graph flow"
        )
    return obj
