"""What every command needs before it does anything: the app (from ``-A``, from
``celery -A`` or Celery's current app), the graph settings, a flow, a run, run inputs.

Nothing here prints; bad input raises :class:`UsageError` with a one-line message.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from typing import Any

import click
from celery import Celery

from ..apploader import import_flow, load_app
from ..client import GraphRun
from ..errors import UsageError
from ..keys import RUN_ID_RE
from ..pipeline import PipelineError
from ..pipeline import load as load_pipeline
from ..state import State, state_for
from ..ui.flows import SETTING as FLOWS_SETTING
from ..ui.flows import FlowRegistry

# The worker attachment and the run metrics' receivers, as importing celery_graph
# connected them before its names became lazy: a flow a command loads attaches its app,
# and a run a command starts or resumes counts in the metrics
from ..worker import attach  # noqa: F401
from .options import given


def celery_app(ctx: click.Context) -> Any:
    """The app of ``celery -A APP workflow ...``: Celery's own CLI puts it in the root
    context's object (``CLIContext.app``); None outside the ``celery`` command or when
    ``celery`` was started without ``-A``."""
    root = ctx.find_root()
    ref = root.params.get("app")
    if not ref:
        return None
    app = getattr(root.obj, "app", None)
    if isinstance(app, Celery):
        return app
    if isinstance(ref, str):  # shell completion: Celery's group callback has not run
        return load_app(ref)
    return ref if isinstance(ref, Celery) else None


def named_app(ctx: click.Context) -> Any:
    """The app named on the command line: the command's own ``-A``, else ``celery -A``;
    None when neither was given."""
    ref = given(ctx, "app")
    if ref:
        return load_app(ref)
    app = celery_app(ctx)
    if app is not None:
        app.set_current()
    return app


def app_for(ctx: click.Context) -> Any:
    """The app a command works on: the one named on the command line, else Celery's
    current app (which importing a flow's module may have just set)."""
    app = named_app(ctx)
    return app if app is not None else load_app(None)


def configured_app() -> Any:
    """The app the current command works on (:func:`app_for`), configured (:func:`configure`)."""
    ctx = click.get_current_context()
    app = app_for(ctx)
    configure(ctx, app)
    return app


def configure(ctx: click.Context, app: Any) -> State:
    """Apply --redis-url / --key-prefix, and make sure the app has a broker to send to."""
    redis_url = given(ctx, "redis_url")
    key_prefix = given(ctx, "key_prefix")
    if redis_url:
        app.conf.graph_redis_url = redis_url
    if key_prefix:
        app.conf.graph_key_prefix = key_prefix
    # A bare app (no -A, no app in the flow's module) sends through the graph Redis.
    if not app.conf.broker_url and not os.environ.get("CELERY_BROKER_URL"):
        url = app.conf.get("graph_redis_url") or os.environ.get("CELERY_GRAPH_REDIS_URL")
        if url:
            app.conf.broker_url = url
    return state_for(app)  # validates the settings now, with a one-line error


def load_flow(ref: str) -> Any:
    """The Flow at ``module:attr``, or built from a pipeline file ``path.toml``."""
    if ref.endswith(".toml"):
        try:
            return load_pipeline(ref)
        except PipelineError as exc:
            raise UsageError(str(exc)) from exc

    return import_flow(ref)


def parse_inputs(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``key=value`` pairs; a value is JSON when it parses as JSON, else a string."""
    inputs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"--input {pair!r}: expected key=value with a parameter name as key")
        try:
            inputs[key] = json.loads(raw)
        except ValueError:
            inputs[key] = raw
    return inputs


def is_run_id(value: str) -> bool:
    return bool(RUN_ID_RE.match(value))


def open_run(app: Any, run_id: str) -> GraphRun:
    if not is_run_id(run_id):
        raise UsageError(f"{run_id!r} is not a run id (32 hex digits)")
    run = GraphRun(run_id, app=app)
    run.summary()  # raises RunNotFound for an unknown id (a few keys read)
    return run


_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float) -> float:
    """``--since``: an age before ``now`` (``30m``, ``2h``, ``7d``, ``1w``, ``90s``) or an
    ISO 8601 time (UTC unless it names its zone); seconds since the epoch."""
    raw = text.strip()
    age = _AGE.match(raw)
    if age:
        return now - float(age.group(1)) * _UNIT[age.group(2)]
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise UsageError(
            f"--since {text!r}: expected an age (30m, 2h, 7d) or a time (2026-12-01T08:00)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def flow_registry(app: Any) -> FlowRegistry:
    """The app's ``graph_ui_flows`` (empty when it names none)."""
    return FlowRegistry(app, app.conf.get(FLOWS_SETTING) or {})


def registered_flow_name(ref: str) -> bool:
    """True if ``ref`` names a flow of ``graph_ui_flows`` rather than ``MODULE:FLOW`` or a
    pipeline file: no colon, no ``.toml``."""
    return ":" not in ref and not ref.endswith(".toml")
