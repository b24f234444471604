"""What a process pays for at import: ``import celery_graph`` loads nothing of Celery or
of the rest of the package until a public name is read; the ``workflow`` group that
``celery worker`` loads at every start (Celery's ``celery.commands`` entry point) and a
command of the console script load neither the dashboard's server, the metrics library
nor Tornado unless they need them. Each check runs in a fresh interpreter and looks at
``sys.modules``: nothing here measures time. No Redis needed."""

from __future__ import annotations

import json
import textwrap

import celery_graph
from tests.support.processes import run_py, subprocess_env

HEAVY = ("celery_graph.ui.server", "tornado", "prometheus_client", "http.server")


def loaded_after(code: str, prefixes: tuple[str, ...]) -> list[str]:
    """The modules named ``prefixes`` (or under them) in ``sys.modules`` after ``code``
    ran in a fresh interpreter."""
    script = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import json, sys
        prefixes = {prefixes!r}
        print(json.dumps(sorted(
            m for m in sys.modules for p in prefixes if m == p or m.startswith(p + ".")
        )))
        """
    )
    out = run_py(["-c", script], subprocess_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_importing_celery_graph_loads_neither_celery_nor_the_package() -> None:
    loaded = loaded_after("import celery_graph", ("celery", "kombu", "redis", *HEAVY))
    assert loaded == []
    assert loaded_after("import celery_graph", ("celery_graph",)) == ["celery_graph"]


def test_the_first_public_name_loads_what_importing_the_package_loaded() -> None:
    # worker.attach (the receivers that attach an app declaring a graph task) and the
    # run metrics' receivers come with any public name, as with `import celery_graph`
    # before it became lazy
    loaded = loaded_after(
        "from celery_graph import RunFailed",
        ("celery_graph.worker.attach", "celery_graph.worker.metrics", "celery_graph.dsl"),
    )
    assert {"celery_graph.dsl", "celery_graph.worker.attach", "celery_graph.worker.metrics"} <= set(
        loaded
    )
    assert loaded_after("from celery_graph import task", HEAVY) == []


def test_every_public_name_resolves_to_its_module() -> None:
    from celery_graph import client, dsl, engine, errors, model, protocol
    from celery_graph.worker import attach

    homes = (client, dsl, engine.context, errors, model, protocol, attach)
    for name in celery_graph.__all__:
        value = getattr(celery_graph, name)
        assert any(getattr(home, name, None) is value for home in homes), name
    assert set(celery_graph.__all__) <= set(dir(celery_graph))
    assert celery_graph.__version__
    assert celery_graph.state.__name__ == "celery_graph.state"  # a submodule, as before
    try:
        celery_graph.no_such_name  # noqa: B018
    except AttributeError:
        pass
    else:
        raise AssertionError("celery_graph.no_such_name resolved")


def test_celery_workers_load_only_the_cli_groups() -> None:
    # `celery worker` imports celery_graph.cli:workflow at every start
    loaded = loaded_after(
        "from celery_graph.cli import workflow",
        ("celery_graph", "prometheus_client", "tornado", "http.server"),
    )
    assert loaded == [
        "celery_graph",
        "celery_graph.cli",
        "celery_graph.cli.groups",
        "celery_graph.cli.options",
        "celery_graph.errors",
    ]


def test_a_command_loads_the_dashboard_and_the_metrics_library_only_if_it_needs_them() -> None:
    run_status = """
        from celery_graph.cli import main
        try:
            main(["status", "--help"])
        except SystemExit:
            pass
        """
    assert loaded_after(run_status, HEAVY) == []
    assert "celery_graph.cli.commands" in loaded_after(run_status, ("celery_graph.cli",))
    run_ui = run_status.replace('"status"', '"ui"')
    loaded = loaded_after(run_ui, ("celery_graph.ui.server", "celery_graph.cli.dashboard"))
    assert loaded == ["celery_graph.cli.dashboard", "celery_graph.ui.server"]
