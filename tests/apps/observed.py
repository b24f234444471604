"""A worker app with tracing and error reporting set up as docs/observability.md shows:
Sentry with its Celery integration initialised when the module loads, OpenTelemetry's
Celery instrumentation switched on in each pool process (``worker_process_init``).

`celery -A tests.apps.observed:app worker -P prefork`, configured like
tests.brokerapp's env_app (CGTEST_REDIS_URL, CGTEST_QUEUE, CGTEST_PREFIX), plus
CGTEST_OBSERVED: a tag naming two Redis lists where the test reads what the SDKs send,
``cgtest-spans:<tag>`` (each finished span, as the SDK's JSON) and
``cgtest-events:<tag>`` (each Sentry event, as JSON).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import redis
import sentry_sdk
from celery.signals import worker_process_init
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.transport import Transport

from tests.brokerapp import env_app

TAG = os.environ.get("CGTEST_OBSERVED", "")
_clients: dict[int, redis.Redis] = {}


def _redis() -> redis.Redis:
    """One client per process (the pool processes are forked)."""
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = redis.Redis.from_url(os.environ["CGTEST_REDIS_URL"])
    return _clients[pid]


class RedisSpans(SpanExporter):
    """Writes each finished span to ``cgtest-spans:<tag>``."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if spans:
            _redis().rpush(f"cgtest-spans:{TAG}", *(s.to_json(indent=None) for s in spans))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class RedisEvents(Transport):
    """Writes each Sentry event to ``cgtest-events:<tag>`` instead of sending it."""

    def capture_envelope(self, envelope: Any) -> None:
        event = envelope.get_event()
        if event is not None:
            _redis().rpush(f"cgtest-events:{TAG}", json.dumps(event, default=str))


# -- what docs/observability.md shows --------------------------------------------------

sentry_sdk.init(
    dsn="http://public@127.0.0.1:9/1",  # never used: the transport keeps the events
    transport=RedisEvents,
    integrations=[CeleryIntegration()],
)


@worker_process_init.connect(weak=False)
def init_tracing(**_: Any) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(RedisSpans()))
    CeleryInstrumentor().instrument(tracer_provider=provider)


# ---------------------------------------------------------------------------------------

app = env_app
assert app is not None, "CGTEST_REDIS_URL and CGTEST_QUEUE must be set"


@app.task(name="tests.observed.plain_fails")
def plain_fails() -> None:
    """A plain Celery task, not a node, that fails."""
    raise RuntimeError("a plain task failed")
