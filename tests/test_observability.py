"""Tracing and error reporting through the real SDKs (docs/observability.md).

OpenTelemetry: the real ``CeleryInstrumentor`` on the in-process worker, spans kept by the
SDK's ``InMemorySpanExporter``: every node span carries the run, the node and the flow, a
join's span links to the span of each of its predecessors, and nothing is kept or read
for a node when the instrumentation is off.

The same through a prefork ``celery worker`` subprocess set up as the docs show
(OpenTelemetry instrumented in ``worker_process_init``, Sentry initialised with its Celery
integration when the app module loads), its spans and Sentry events written to Redis by
an exporter and a transport of the test app (tests/apps/observed.py): a failing node's
event carries the run, node and flow tags, and a plain task's event after it in the same
process carries none.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from celery_graph import RunFailed
from celery_graph.integrations import FLOW, NODE, RUN_ID
from celery_graph.state import state_for
from tests.support.helpers import starts_processes, wait_for
from tests.support.processes import Workers
from tests.tasks import audit, boom, extract, load, merge, process, split, transform


def task_id(span: ReadableSpan) -> str:
    """The task id the instrumentation gives a span (its name changed over semantic
    convention versions)."""
    attributes = span.attributes or {}
    return str(attributes.get("messaging.message.id") or attributes.get("messaging.message_id"))


# -- in-process: the real instrumentation on the session's worker -------------------------


class Traced:
    """The instrumentation switched on with an in-memory exporter."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("tests")

    def node_spans(self, run_id: str, fields: set[str]) -> dict[str, ReadableSpan]:
        """{task field: span} of the run's node messages, once all of ``fields`` ended
        (a span ends at task_postrun, after the run may have finished)."""

        def ended() -> dict[str, ReadableSpan] | None:
            found = {
                task_id(s).split(":", 1)[1]: s
                for s in self.exporter.get_finished_spans()
                if s.name.startswith("run/") and task_id(s).startswith(f"{run_id}:")
            }
            return found if fields <= found.keys() else None

        return wait_for(ended, timeout=20, what=f"the spans of {sorted(fields)}")

    def by_id(self, span_id: int) -> ReadableSpan:
        return next(s for s in self.exporter.get_finished_spans() if s.context.span_id == span_id)


@pytest.fixture()
def traced(app: Celery) -> Iterator[Traced]:
    traced = Traced()
    CeleryInstrumentor().instrument(tracer_provider=traced.provider)
    try:
        yield traced
    finally:
        CeleryInstrumentor().uninstrument()
        traced.provider.shutdown()


def trace_fields(app: Celery, run_id: str) -> dict[str, str]:
    """{field: kept traceparent} of the run's node state."""
    state = state_for(app)
    raw = state.client.hgetall(state.keys.nodes(run_id))
    return {
        k.decode().removesuffix(":trace"): v.decode()
        for k, v in raw.items()
        if k.decode().endswith(":trace")
    }


def traceparent(span: ReadableSpan) -> str:
    c = span.context
    return f"00-{c.trace_id:032x}-{c.span_id:016x}-{int(c.trace_flags):02x}"


def test_node_spans_carry_run_node_and_flow_and_a_join_links_to_each_predecessor(app, traced):
    flow = (extract >> (transform | audit) >> load).with_name("etl-traced")
    with traced.tracer.start_as_current_span("submit") as submit:
        run = flow.apply_async()
    assert run.get(timeout=30) == {"rows": [10, 20, 30], "count": 3}
    spans = traced.node_spans(run.id, {"extract", "transform", "audit", "load"})

    for node, span in spans.items():
        assert span.attributes is not None
        assert span.attributes[RUN_ID] == run.id, node
        assert span.attributes[NODE] == node
        assert span.attributes[FLOW] == "etl-traced", node
        assert span.context.trace_id == submit.get_span_context().trace_id, node
        if node != "load":
            assert not span.links, node

    join = spans["load"]
    linked = {link.context.span_id: link for link in join.links}
    assert linked.keys() == {spans["transform"].context.span_id, spans["audit"].context.span_id}
    for pred in ("transform", "audit"):
        link = linked[spans[pred].context.span_id]
        assert link.context.trace_id == spans[pred].context.trace_id
        assert link.attributes is not None and link.attributes[NODE] == pred
    # the join's parent stays the sending of the predecessor that released it
    assert join.parent is not None
    sent_by = traced.by_id(join.parent.span_id)
    assert sent_by.parent is not None
    assert sent_by.parent.span_id in {
        spans["transform"].context.span_id,
        spans["audit"].context.span_id,
    }

    kept = trace_fields(app, run.id)
    assert kept == {node: traceparent(span) for node, span in spans.items()}


def test_an_eager_successor_begun_with_its_predecessors_end_keeps_its_trace_and_flow(app, traced):
    """transform runs next in the worker that ran extract, begun in the call that
    completed extract (complete_begin.lua, before its span existed): its trace context
    is kept by a later call, and its span has the flow that call read."""
    run = (extract >> transform).with_name("chain-traced").apply_async()
    assert run.get(timeout=30) == [10, 20, 30]
    spans = traced.node_spans(run.id, {"extract", "transform"})
    for node, span in spans.items():
        assert span.attributes is not None and span.attributes[FLOW] == "chain-traced", node
    nodes = state_for(app).runs.node_fields(run.id)
    extract_finished = nodes["extract:run"].split("|")[2]
    assert nodes["transform:run"].split("|")[1] == extract_finished  # begun in that call
    assert trace_fields(app, run.id) == {node: traceparent(span) for node, span in spans.items()}


def test_a_run_without_a_flow_name_has_no_flow_attribute_and_map_items_keep_no_trace(app, traced):
    run = (split >> process.map("split") >> merge).apply_async(n=3)
    assert run.get(timeout=30) == ["ITEM0", "ITEM1", "ITEM2"]
    items = {f"process#{i}" for i in range(3)}
    spans = traced.node_spans(run.id, {"split", "process", "merge", *items})
    for field, span in spans.items():
        assert span.attributes is not None
        assert span.attributes[RUN_ID] == run.id, field
        assert span.attributes[NODE] == field.split("#")[0], field
        assert FLOW not in span.attributes, field
    # the map node's own message keeps its span; its items keep none
    assert trace_fields(app, run.id).keys() == {"split", "process", "merge"}


def test_a_failing_node_span_has_its_run_and_node(app, traced):
    run = (extract >> boom).with_name("fails-traced").apply_async()
    with pytest.raises(RunFailed):
        run.get(timeout=30)
    spans = traced.node_spans(run.id, {"extract", "boom"})
    failed = spans["boom"]
    assert failed.attributes is not None
    assert (failed.attributes[RUN_ID], failed.attributes[NODE]) == (run.id, "boom")
    assert failed.attributes[FLOW] == "fails-traced"
    assert not failed.status.is_ok


def test_without_the_instrumentation_nodes_keep_no_trace_context(app):
    assert not CeleryInstrumentor().is_instrumented_by_opentelemetry
    run = (extract >> (transform | audit) >> load).with_name("etl-untraced").apply_async()
    assert run.get(timeout=30) == {"rows": [10, 20, 30], "count": 3}
    assert trace_fields(app, run.id) == {}


# -- a prefork `celery worker` set up as the docs show ------------------------------------


class ObservedWorkers(Workers):
    """Workers of tests/apps/observed.py: Sentry and OpenTelemetry on, as documented."""

    def app_ref(self) -> str:
        return "tests.apps.observed:app"


class Observed:
    def __init__(self, workers: Workers, client: redis.Redis, tag: str) -> None:
        self.workers = workers
        self.app = workers.app
        self.client = client
        self.tag = tag

    def _read(self, kind: str) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.client.lrange(f"cgtest-{kind}:{self.tag}", 0, -1)]

    def node_spans(self, run_id: str, fields: set[str]) -> dict[str, dict[str, Any]]:
        def ended() -> dict[str, dict[str, Any]] | None:
            found = {}
            for span in self._read("spans"):
                attributes = span["attributes"]
                tid = str(
                    attributes.get("messaging.message.id") or attributes.get("messaging.message_id")
                )
                if span["name"].startswith("run/") and tid.startswith(f"{run_id}:"):
                    found[tid.split(":", 1)[1]] = span
            return found if fields <= found.keys() else None

        return wait_for(ended, timeout=30, what=f"the exported spans of {sorted(fields)}")

    def event_of(self, task_id: str) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            for event in self._read("events"):
                if event.get("tags", {}).get("celery_task_id") == task_id and event.get(
                    "exception"
                ):
                    return event
            return None

        return wait_for(found, timeout=30, what=f"the Sentry event of {task_id}")


@pytest.fixture(scope="module")
@starts_processes
def observed(redis_url: str, rclient: redis.Redis) -> Iterator[Observed]:
    tag = uuid.uuid4().hex[:12]
    # one pool process: a plain task runs in the process a node ran in before it
    workers = ObservedWorkers(redis_url, concurrency=1, pool="prefork")
    workers.extra_env["CGTEST_OBSERVED"] = tag
    try:
        workers.start("observed")
        yield Observed(workers, rclient, tag)
    finally:
        workers.stop()
        workers.app.connection_for_write().default_channel.queue_purge(workers.queue)
        rclient.delete(f"cgtest-spans:{tag}", f"cgtest-events:{tag}")


def test_a_prefork_worker_traced_as_documented_shows_run_node_flow_and_join_links(observed):
    flow = (extract >> (transform | audit) >> load).with_name("etl-prefork")
    run = flow.submit(app=observed.app)
    assert run.get(timeout=30) == {"rows": [10, 20, 30], "count": 3}
    spans = observed.node_spans(run.id, {"extract", "transform", "audit", "load"})
    for node, span in spans.items():
        attributes = span["attributes"]
        assert (attributes[RUN_ID], attributes[NODE]) == (run.id, node)
        assert attributes[FLOW] == "etl-prefork"
        assert span["context"]["trace_id"] == spans["extract"]["context"]["trace_id"]
    links = {link["context"]["span_id"]: link["attributes"] for link in spans["load"]["links"]}
    assert links == {
        spans["transform"]["context"]["span_id"]: {NODE: "transform"},
        spans["audit"]["context"]["span_id"]: {NODE: "audit"},
    }


def test_a_failing_nodes_sentry_event_has_run_node_and_flow_tags_and_the_next_task_none(
    observed,
):
    run = (extract >> boom).with_name("nightly").submit(app=observed.app)
    with pytest.raises(RunFailed) as failed:
        run.get(timeout=30)
    assert failed.value.node_id == "boom"
    event = observed.event_of(f"{run.id}:boom")
    assert {k: v for k, v in event["tags"].items() if k.startswith("celery_graph.")} == {
        RUN_ID: run.id,
        NODE: "boom",
        FLOW: "nightly",
    }
    (exception,) = event["exception"]["values"]
    assert (exception["type"], exception["value"]) == ("ValueError", "boom went the node")

    # a plain task in the same pool process afterwards: its event has no node's tags
    plain = observed.app.send_task("tests.observed.plain_fails")
    event = observed.event_of(plain.id)
    assert not [k for k in event["tags"] if k.startswith("celery_graph.")], event["tags"]
    assert event["exception"]["values"][0]["type"] == "RuntimeError"
