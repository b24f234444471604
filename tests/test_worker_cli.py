"""graph-worker's command line and the defaults it applies (no worker started here,
except `--help` run as a real command)."""

from __future__ import annotations

import subprocess

import pytest
from celery import Celery

from celery_graph.config import RELIABLE_DEFAULTS
from celery_graph.config import WorkerOptions as Options
from celery_graph.errors import ConfigurationError, UsageError
from celery_graph.worker.command import (
    apply_defaults,
    check_agreement,
    prepare,
    split_argv,
    user_set,
)
from tests.support import ROOT
from tests.support.processes import GRAPH_WORKER, graph_worker_help, subprocess_env

pytestmark = pytest.mark.slow  # the graph-worker command in subprocesses


def test_global_options_move_before_worker_and_the_rest_passes_through_unchanged():
    global_args, worker_args, want_help = split_argv(
        [
            "-A",
            "proj.celery",
            "--key-prefix",
            "myapp:wf",
            "--redis-url=redis://r:6379/1",
            "-Q",
            "gpu,cpu",
            "-c",
            "4",
            "-P",
            "prefork",
            "-n",
            "w1@%h",
            "-l",
            "INFO",
            "--metrics-port",
            "9808",
            "--graceful-timeout=90",
            "-E",
            "--without-mingle",
            "-b",
            "redis://b:6379/0",
            "--autoscale",
            "10,2",
            "-D",
            "--pidfile",
            "/tmp/w.pid",
        ]
    )
    assert global_args == ["-A", "proj.celery", "-b", "redis://b:6379/0"]
    assert worker_args == [
        "--key-prefix",
        "myapp:wf",
        "--redis-url=redis://r:6379/1",
        "-Q",
        "gpu,cpu",
        "-c",
        "4",
        "-P",
        "prefork",
        "-n",
        "w1@%h",
        "-l",
        "INFO",
        "--metrics-port",
        "9808",
        "--graceful-timeout=90",
        "-E",
        "--without-mingle",
        "--autoscale",
        "10,2",
        "-D",
        "--pidfile",
        "/tmp/w.pid",
    ]
    assert not want_help


def test_environment_supplies_the_worker_options(monkeypatch):
    monkeypatch.setenv("CELERY_GRAPH_METRICS_PORT", "9100")
    monkeypatch.setenv("CELERY_GRAPH_GRACEFUL_TIMEOUT", "15")
    opts = Options.from_env()
    expected = (9100, 15.0, "127.0.0.1")
    assert (opts.metrics_port, opts.graceful_timeout, opts.metrics_host) == expected
    monkeypatch.setenv("CELERY_GRAPH_METRICS_PORT", "http")
    with pytest.raises(ConfigurationError, match="CELERY_GRAPH_METRICS_PORT"):
        Options.from_env()


def test_bad_command_lines_are_refused():
    with pytest.raises(UsageError, match="needs a value"):
        split_argv(["-A"])


def test_reliable_defaults_fill_only_what_the_app_leaves_open():
    class Config:
        worker_prefetch_multiplier = 4  # the user's choice, from a config object

    app = Celery("cli-defaults", set_as_current=False)
    app.config_from_object(Config)
    app.conf.task_acks_late = False  # the user's choice, set directly
    applied = apply_defaults(app)
    assert applied == {"task_reject_on_worker_lost": True, "worker_send_task_events": True}
    assert app.conf.task_acks_late is False
    assert app.conf.worker_prefetch_multiplier == 4
    assert app.conf.task_reject_on_worker_lost is True

    fresh = Celery("cli-fresh", set_as_current=False)
    assert apply_defaults(fresh) == RELIABLE_DEFAULTS
    assert all(user_set(fresh.conf, k) for k in RELIABLE_DEFAULTS)


def test_key_prefix_flag_may_not_contradict_the_app():
    app = Celery("cli-agree", set_as_current=False)
    app.conf.graph_key_prefix = "myapp:wf"
    check_agreement(app, Options(key_prefix="myapp:wf"))  # same value: fine
    check_agreement(app, Options())  # no flag: the app's setting is used
    with pytest.raises(ConfigurationError, match=r"contradicts app\.conf\.graph_key_prefix"):
        check_agreement(app, Options(key_prefix="other"))


def test_help_documents_own_options_and_the_celery_worker_options():
    out = graph_worker_help()
    for flag in (
        "--key-prefix",
        "--redis-url",
        "--metrics-port",
        "--graceful-timeout",
        "-A, --app",
        "passed through unchanged",
        "--queues",
        "--concurrency",
        "--pool",
        "--hostname",
        "--loglevel",
        "--task-events",
        "--without-mingle",
        "--prefetch-multiplier",
    ):
        assert flag in out, flag


def test_missing_app_is_a_usage_error():
    proc = subprocess.run(
        [*GRAPH_WORKER, "-c", "1"],
        env=subprocess_env(CELERY_APP=""),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "-A/--app" in proc.stderr


def test_an_app_finalized_at_import_gets_a_warning(capsys, redis_url):
    app = Celery("cli-finalized", broker=redis_url, set_as_current=False)
    app.finalize()
    prepare(app)
    assert "was finalized" in capsys.readouterr().err

    configured = Celery("cli-configured", broker=redis_url, set_as_current=False)
    configured.conf.update(task_acks_late=True, task_reject_on_worker_lost=True)
    configured.finalize()
    prepare(configured)  # nothing left for graph-worker to set on the tasks
    assert capsys.readouterr().err == ""


def test_graph_worker_refuses_a_key_prefix_that_contradicts_the_app(redis_url):
    proc = subprocess.run(
        [*GRAPH_WORKER, "-A", "tests.apps.prefixed", "--key-prefix", "cgops:other", "-c", "1"],
        env=subprocess_env(CGOPS_BROKER_URL=redis_url, CGOPS_QUEUE="cgops-cli-prefixed"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stderr
    assert "contradicts app.conf.graph_key_prefix = 'cgops:fixed'" in proc.stderr
