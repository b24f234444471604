"""What mypy --strict says about the DSL's types: checked by tests/test_typing.py, never run.

A line ending in ``# E: code[, code]`` must have exactly those mypy errors; every other
line must have none (``assert_type`` lines fail as an ``assert-type`` error).
"""

from __future__ import annotations

from typing import Any, TypeVar

from typing_extensions import assert_type

from celery_graph import (
    Flow,
    GraphRun,
    Parallel,
    RunContext,
    Sequence,
    TaskNode,
    child,
    node,
    result_of,
    task,
    wait_for,
    workflow,
)

T = TypeVar("T")


def result(flow: Flow[T]) -> T:
    """What a run of ``flow`` returns, for assert_type."""
    return flow.apply_async().get(timeout=10)


@task
def extract(n: int = 3) -> list[int]:
    return list(range(n))


@task(queue="cpu", max_retries=3)
def transform(extract: list[int], factor: int = 10) -> list[int]:
    return [x * factor for x in extract]


@task
def audit(extract: list[int]) -> int:
    return len(extract)


@task(name="shop.load", priority=3)
def load(transform: list[int], audit: int) -> dict[str, int]:
    return {"rows": len(transform), "count": audit}


@task
def send_report(summary: dict[str, int], to: str = "ops") -> str:
    return f"{to}: {summary}"


@task(bind=True)
def with_self(self: Any, x: int) -> str:
    return str(x)


@task(inject_context=True)
def counted(ctx: RunContext, x: int) -> int:
    return x


@task(pydantic=True)
def validated(x: int) -> str:
    return str(x)


# -- calling a node locally: the function's own parameters and result ---------------------

assert_type(extract(5), list[int])
assert_type(transform([1], factor=2), list[int])
extract("x", 5, 6)  # E: call-arg, arg-type
extract(m=1)  # E: call-arg
transform([1], factor="2")  # E: arg-type
assert_type(with_self(1), str)  # bind=True: Celery passes the task
with_self(None, 1)  # E: call-arg, arg-type
assert_type(counted(RunContext.__new__(RunContext), 1), int)
counted(1)  # E: call-arg, arg-type
validated("not checked")  # pydantic=True converts arguments: not checked
task(queue=5)  # E: call-overload


# -- Celery's Task API: delay and si are complete calls, s is partial ------------------------

extract.delay(5)
extract.delay("5")  # E: arg-type
transform.si([1], factor=2)
transform.si()  # E: call-arg
transform.s()  # a chain passes the first argument later: not checked

# -- bind, map, delay_by, with_retries keep the node's types ---------------------------------

eu = extract.bind(id="extract_eu", n=4)
assert_type(eu(2), list[int])
eu("2")  # E: arg-type
assert_type(result(eu), list[int])
assert_type(result(transform.with_retries(2).delay_by(5)), list[int])
assert_type(result(extract >> transform.map("extract")), list[list[int]])
# a bound value does not change the parameters: the bound node's own call still asks for it
send_report.bind(summary={"rows": 1}).delay()  # E: call-arg

# -- operators take flows only ------------------------------------------------------------

extract >> 42  # E: operator
42 >> extract  # E: operator
extract | "audit"  # E: operator
"extract" >> audit  # E: operator
extract >> [transform, 42]  # E: list-item

# -- a run's get(): the single sink's result, or a dict for several sinks -------------------

flow = extract >> (transform | audit) >> load
assert_type(flow, Sequence[dict[str, int]])
assert_type(flow.apply_async(), GraphRun[dict[str, int]])
assert_type(flow.apply_async(n=5).get(timeout=30), dict[str, int])
assert_type(flow.submit({"n": 5}).get(), dict[str, int])
assert_type(flow.with_name("etl").apply_async().get(), dict[str, int])
assert_type(extract.as_graph().apply_async().get(), list[int])
assert_type(transform | audit, Parallel)
assert_type(result(extract >> (transform | audit)), dict[str, Any])
assert_type(result(extract >> [transform, audit]), dict[str, Any])
assert_type(result([transform, audit] >> load), dict[str, int])
assert_type(result((transform | audit).named("checks") >> load), dict[str, int])
members = [audit.bind(id=f"audit_{i}") for i in range(3)]
assert_type(result(extract >> members), dict[str, Any])
assert_type(result(members >> send_report), str)
run: GraphRun[str] = (extract >> transform).apply_async()  # E: assignment
with workflow("etl") as wf:
    extract >> transform
assert_type(wf.apply_async().get(), Any)  # a workflow can still grow: Any
assert_type(GraphRun("0" * 32).get(), Any)  # reopened by id: Any
assert_type(node(object()), TaskNode[..., Any])  # an existing Celery task: Any
assert_type(result(node(extract, id="extract_2")), list[int])  # a node stays typed

# -- result_of takes a node, a named group or an id -----------------------------------------

report = load >> send_report.bind(summary=result_of(load))
assert_type(result(report), str)
result_of((transform | audit).named("checks"))
result_of("load")
result_of(42)  # E: arg-type

# -- handlers, compensations, waits and child flows keep the flow's type ---------------------


@task
def refund(charge: int) -> None:
    return None


@task
def alert(failure: dict[str, Any]) -> None:
    return None


assert_type(result(flow.on_failure(alert).on_exit(alert)), dict[str, int])
assert_type(result(extract.compensate(refund) >> transform), list[int])
assert_type(result(extract >> wait_for("approval", timeout=60) >> transform), list[int])
assert_type(wait_for("approval"), TaskNode[[], Any])
flow.on_failure(print)  # E: arg-type
wait_for("approval", timeout="soon")  # E: arg-type
child(flow, n=3)
child(42)  # E: arg-type
GraphRun("0" * 32).signal("approval", {"approved": True, "by": "ana"})
