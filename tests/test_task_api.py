"""``@task`` keeps Celery's Task API for plain use (``delay``, ``s``, ``si``, ``apply_async``,
``apply``), honours ``gen_task_name`` and every task option (``bind``, ``pydantic``...),
and the same task still composes in graphs. A real in-process worker runs everything."""

from __future__ import annotations

import threading

import pytest
from celery import Celery, Task, chain, current_app, group
from celery.result import AsyncResult, EagerResult
from celery.signals import task_prerun
from pydantic import BaseModel

from celery_graph import (
    ConfigurationError,
    GraphDefinitionError,
    GraphRun,
    RunFailed,
    TaskNode,
    compat,
    task,
)
from celery_graph.executor import GraphTask
from celery_graph.signals import graph_task_declared
from tests.tasks import step

# -- tasks of this module (registered at import, before the session's worker starts) ----


@task
def plus(x: int, y: int = 0) -> int:
    return x + y


@task
def tripled(plus: int) -> int:
    return plus * 3


@task(bind=True)
def whoami(self, x: int = 0) -> dict:
    return {"task": self.name, "id": self.request.id, "x": x}


class Order(BaseModel):
    qty: int
    price: float


class Total(BaseModel):
    amount: float


@task
def order(qty: object = 2, price: float = 1.5) -> dict:
    return {"qty": qty, "price": price}


# Celery 5.5 added pydantic=True; on older Celery declaring it is refused (tested below)
PYDANTIC = compat.has(compat.TASK_OPTIONS_SINCE["pydantic"])
needs_pydantic = pytest.mark.skipif(
    not PYDANTIC, reason=f"@task(pydantic=True) needs Celery 5.5+, this is {compat.installed()}"
)

if PYDANTIC:

    @task(pydantic=True)
    def priced(order: Order) -> Total:
        return Total(amount=order.qty * order.price)


@task(
    rate_limit="50/s",
    time_limit=30,
    soft_time_limit=20,
    queue="cgtest-options-q",
    max_retries=7,
    ignore_result=False,
)
def optioned() -> None:
    return None


class AuditedTask(Task):
    """A project's own base class: its settings and hooks stay."""

    acks_late = False
    audited = True


@task(base=AuditedTask)
def based(x: int = 1) -> int:
    return x * 2


class Prefixing(Celery):
    def gen_task_name(self, name: str, module: str) -> str:
        return f"renamed.{module.rsplit('.', 1)[-1]}.{name}"


_before = current_app._get_current_object()
_naming = Prefixing("cgtest-naming", set_as_current=True)


@task
def named_by_app(x: int = 1) -> int:
    return x + 100


_before.set_current()


# -- what the worker saw ---------------------------------------------------------------

_seen: list[tuple[str, str]] = []
_seen_lock = threading.Lock()


@task_prerun.connect
def _record(sender=None, task_id=None, **_):
    with _seen_lock:
        _seen.append((getattr(sender, "name", ""), task_id))


def seen_names(task_id: str) -> list[str]:
    with _seen_lock:
        return [name for name, tid in _seen if tid == task_id]


# -- Celery's Task API on the node -----------------------------------------------------


def test_delay_returns_celery_result_run_by_the_worker(app):
    result = plus.delay(2, 3)
    assert isinstance(result, AsyncResult)
    assert result.get(timeout=20) == 5
    assert seen_names(result.id) == ["tests.test_task_api.plus"]


def test_apply_async_takes_celery_arguments_and_options(app):
    result = plus.apply_async((4,), {"y": 5}, countdown=0.1, task_id="task-api-apply-async")
    assert result.id == "task-api-apply-async"
    assert result.get(timeout=20) == 9
    assert seen_names(result.id) == ["tests.test_task_api.plus"]


def test_s_and_si_are_celery_signatures(app):
    sig = plus.s(1, 2)
    assert sig.task == "tests.test_task_api.plus" and sig.args == (1, 2)
    assert sig.delay().get(timeout=20) == 3
    assert plus.si(5, y=5).apply_async().get(timeout=20) == 10
    assert plus.si(1).immutable


def test_apply_runs_here_and_returns_eager_result(app):
    result = plus.apply((2, 2))
    assert isinstance(result, EagerResult)
    assert result.get() == 4


def test_signatures_work_in_celery_chain_and_group(app):
    assert chain(plus.s(1, 2), plus.s(10), tripled.s()).apply_async().get(timeout=20) == 39
    assert group(plus.s(i, i) for i in range(4)).apply_async().get(timeout=20) == [0, 2, 4, 6]
    # an immutable signature ignores the previous step's result
    assert chain(plus.s(1, 1), plus.si(7)).apply_async().get(timeout=20) == 7


def test_bound_node_arguments_go_with_the_plain_call(app):
    assert plus.bind(id="p", y=10).delay(1).get(timeout=20) == 11
    assert plus.bind(id="p", y=10).s(2).delay().get(timeout=20) == 12
    assert plus.bind(id="p", y=10).delay(1, y=0).get(timeout=20) == 1  # the call wins


def test_name_and_async_result_are_celerys(app):
    assert plus.name == "tests.test_task_api.plus" == plus.celery_task.name
    result = plus.delay(1, 1)
    assert plus.AsyncResult(result.id).get(timeout=20) == 2


def test_the_same_task_composes_in_a_graph(app):
    run = (plus.bind(x=2, y=3) >> tripled).apply_async()
    assert isinstance(run, GraphRun)
    assert run.get(timeout=20) == 15
    assert seen_names(f"{run.id}:plus") == ["tests.test_task_api.plus"]


def test_a_one_node_graph_is_as_graph(app):
    run = plus.bind(x=4).as_graph().apply_async(y=1)
    assert isinstance(run, GraphRun)
    assert run.get(timeout=20) == 5


def test_graph_keywords_on_the_bare_task_are_refused_before_sending(app, published):
    with pytest.raises(TypeError, match=r"node 'plus'.*'y'.*as_graph\(\)\.apply_async"):
        plus.apply_async(y=1)
    with pytest.raises(TypeError, match=r"'idempotency_key'"):
        plus.apply_async((1,), idempotency_key="k")
    with pytest.raises(TypeError, match=r"'deadline'"):
        plus.apply((1,), deadline=3)
    assert published == []


def test_start_delay_is_delay_by_and_delay_is_celerys(app):
    delayed = plus.delay_by(0.2)
    assert delayed.start_delay == 0.2 and plus.start_delay == 0.0
    assert delayed.compile().nodes["plus"].delay == 0.2
    assert callable(plus.delay)
    assert (delayed.bind(x=1) >> tripled).apply_async().get(timeout=20) == 3


def test_calling_the_node_runs_the_function_locally():
    assert plus(2, y=5) == 7
    assert whoami(x=3)["x"] == 3  # bind=True: Celery supplies the task


@needs_pydantic
def test_calling_a_pydantic_node_validates_locally():
    assert priced({"qty": 2, "price": 2.0}) == {"amount": 4.0}


# -- task options and names -------------------------------------------------------------


def test_celery_task_options_pass_through(app):
    registered = app.tasks[optioned.task_name]
    assert registered.rate_limit == "50/s"
    assert registered.time_limit == 30 and registered.soft_time_limit == 20
    assert registered.queue == "cgtest-options-q"
    assert registered.max_retries == 7
    assert dict(optioned.options)["queue"] == "cgtest-options-q"  # routes the graph node


def test_a_base_class_of_the_project_keeps_its_settings_and_runs_graphs(app):
    registered = app.tasks[based.task_name]
    assert isinstance(registered, AuditedTask) and isinstance(registered, GraphTask)
    assert registered.audited and registered.acks_late is False  # the project's wins
    assert based.delay(4).get(timeout=20) == 8
    assert (plus.bind(x=1) >> based.bind(x=5)).apply_async().get(timeout=20) == 10


def test_gen_task_name_of_the_app_is_honoured(app):
    assert named_by_app.task_name == "renamed.test_task_api.named_by_app"
    assert "renamed.test_task_api.named_by_app" in app.tasks
    result = named_by_app.delay(2)
    assert result.get(timeout=20) == 102
    assert seen_names(result.id) == ["renamed.test_task_api.named_by_app"]
    run = (plus.bind(x=1) >> named_by_app.bind(x=5)).apply_async()
    assert run.get(timeout=20) == 105
    assert seen_names(f"{run.id}:named_by_app") == ["renamed.test_task_api.named_by_app"]
    _naming.close()


def test_bind_true_gives_the_task_as_self_plainly_and_in_a_graph(app):
    plain = whoami.delay(x=4)
    assert plain.get(timeout=20) == {"task": whoami.task_name, "id": plain.id, "x": 4}
    run = (plus.bind(x=1) >> whoami.bind(x=9)).apply_async()
    assert run.get(timeout=20) == {"task": whoami.task_name, "id": f"{run.id}:whoami", "x": 9}
    assert [p.name for p in whoami.declaration().params] == ["x"]  # self is not a node input


def test_bind_and_inject_context_together_are_refused():
    with pytest.raises(GraphDefinitionError, match="bind=True and inject_context=True"):

        @task(bind=True, inject_context=True)
        def both(self, ctx):
            return None


# -- pydantic=True -------------------------------------------------------------------------


@needs_pydantic
def test_pydantic_validates_and_dumps_plainly(app):
    assert priced.delay({"qty": 3, "price": 2.0}).get(timeout=20) == {"amount": 6.0}
    assert priced.delay(Order(qty=1, price=4.0)).get(timeout=20) == {"amount": 4.0}
    bad = priced.delay({"qty": "many", "price": 2.0})
    with pytest.raises(Exception) as info:
        bad.get(timeout=20)
    assert "ValidationError" in type(info.value).__name__ + repr(info.value)


@needs_pydantic
def test_pydantic_validates_and_dumps_in_a_graph(app):
    assert (order.bind(qty=2, price=2.5) >> priced).apply_async().get(timeout=20) == {"amount": 5.0}
    run = (order.bind(qty="many") >> priced).apply_async()
    with pytest.raises(RunFailed) as info:
        run.get(timeout=20)
    assert info.value.node_id == "priced"
    assert info.value.exc_type == "ValidationError"


def test_pydantic_on_a_celery_without_it_is_refused_at_declaration(monkeypatch):
    """Celery before 5.5 would take pydantic=True silently and validate nothing: the
    declaration says so in one line instead (checked on the installed Celery when it is
    older, else on what 5.3 and 5.4 report)."""
    if PYDANTIC:
        monkeypatch.setattr(compat, "CELERY_VERSION", (5, 4, 1))
    declared = []

    def seen(sender=None, **_):
        declared.append(sender)

    graph_task_declared.connect(seen, weak=False)
    try:
        with pytest.raises(ConfigurationError) as info:

            @task(pydantic=True, queue="q")
            def validated(order: Order) -> Total:
                return Total(amount=order.qty)
    finally:
        graph_task_declared.disconnect(seen)
    where = "test_pydantic_on_a_celery_without_it_is_refused_at_declaration.<locals>.validated"
    assert str(info.value) == (
        f"@task({where}): pydantic=True needs Celery 5.5 or newer (Celery "
        f"{compat.installed()} is installed, which would ignore it); upgrade Celery or drop "
        "the option"
    )
    assert declared == []  # refused before anything was registered


def test_task_node_is_exported():
    assert isinstance(plus, TaskNode)
    assert isinstance(step.as_graph(), TaskNode) is False
