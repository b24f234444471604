"""Importing celery_graph changes nothing in Celery; an app gets the worker features
through Celery's public hooks once a graph task is declared, or from install(app)
(docs/worker.md). Each check runs in a fresh interpreter: what is imported, registered
and connected is per process. No Redis needed."""

from __future__ import annotations

import textwrap

from tests.support.processes import run_py, subprocess_env

STEP = "celery_graph.worker.step:GraphWorkerStep"


def run_code(code: str) -> None:
    out = run_py(["-c", textwrap.dedent(code)], subprocess_env(), timeout=60)
    assert out.returncode == 0, out.stderr


def test_importing_celery_graph_keeps_celerys_set_of_apps():
    run_code("import celery._state as s; a = s._apps; import celery_graph; assert s._apps is a")


def test_importing_celery_graph_registers_nothing_with_celery():
    run_code(
        """
        import celery._state as s
        from celery import Celery, signals

        app = Celery("plain", set_as_current=False)
        finalizers = set(s._on_app_finalizers)
        import celery_graph

        assert set(s._on_app_finalizers) == finalizers
        assert not app.user_options["worker"] and STEP not in app.steps["worker"]
        app.finalize()
        assert not [name for name in app.tasks if name.startswith("celery_graph.")]
        for name in ("task_failure", "task_retry", "task_unknown", "task_prerun",
                     "task_postrun", "worker_init", "worker_shutdown"):
            assert not getattr(signals, name).receivers, name
        """.replace("STEP", repr(STEP))
    )


def test_importing_celery_graph_loads_no_cli_web_server_metrics_redis_or_tracing_sdk():
    # Celery itself imports click (celery.app.base uses click.exceptions): the check is
    # that celery_graph adds none of these to what `from celery import Celery` loads.
    run_code(
        """
        import sys
        from celery import Celery, Task, shared_task

        before = set(sys.modules)
        import celery_graph

        heavy = ("click", "celery.bin", "celery.worker", "tornado", "prometheus_client",
                 "http.server", "redis", "kombu.transport.redis", "opentelemetry",
                 "sentry_sdk")
        added = set(sys.modules) - before
        loaded = sorted(m for m in added for h in heavy if m == h or m.startswith(h + "."))
        assert not loaded, loaded
        for name in ("celery.bin", "tornado", "prometheus_client", "redis"):
            assert name not in sys.modules, name
        """
    )


def test_declaring_a_graph_task_attaches_to_apps_and_wraps_only_graph_tasks():
    run_code(
        """
        from celery import Celery

        import celery_graph
        from celery_graph.executor import adopted

        app = Celery("proj", set_as_current=False)

        @app.task
        def plain(x):
            return x

        assert not app.user_options["worker"] and STEP not in app.steps["worker"]

        @celery_graph.task
        def graph_step(x):
            return x

        names = {o.name for o in app.user_options["worker"]}
        assert {"metrics_port", "metrics_host", "graceful_timeout", "key_prefix",
                "redis_url"} <= names, names
        assert STEP in app.steps["worker"]
        assert adopted(app.tasks[graph_step.task_name])
        assert not adopted(app.tasks[plain.name])  # wrapped only in a worker of this app
        assert {"celery_graph.run_graph", "celery_graph.call"} <= set(app.tasks)

        later = Celery("later", set_as_current=False)  # created after the declaration
        assert STEP not in later.steps["worker"]
        later.finalize()  # connect_on_app_finalize, as shared_task does
        assert STEP in later.steps["worker"]
        assert graph_step.task_name in later.tasks and "celery_graph.call" in later.tasks
        """.replace("STEP", repr(STEP))
    )


def test_install_attaches_an_app_that_declares_no_graph_task():
    run_code(
        """
        from celery import Celery

        import celery_graph

        app = Celery("proj", set_as_current=False)
        celery_graph.install(app)
        celery_graph.install(app)  # idempotent
        assert len(app.user_options["worker"]) == 5
        assert STEP in app.steps["worker"]
        assert "celery_graph.run_graph" in app.tasks
        """.replace("STEP", repr(STEP))
    )
