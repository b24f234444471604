"""celery-graph tasks are real Celery tasks; runs outlive the process that started them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from celery_graph import GraphRun, RunCancelled
from tests.support import ROOT
from tests.support.helpers import postruns
from tests.tasks import add, extract, read_trace, step


def test_tasks_show_under_their_own_names_in_inspect_registered(app):
    replies = app.control.inspect(timeout=5).registered() or {}
    assert replies, "no worker answered inspect registered"
    names = next(iter(replies.values()))
    for name in ("tests.tasks.extract", "tests.tasks.load", "tests.tasks.t8"):
        assert name in names


def test_decorated_task_works_as_plain_celery_task(app):
    assert extract.celery_task.name == "tests.tasks.extract"
    assert extract.celery_task.apply(kwargs={"n": 2}).get() == [1, 2]  # eager, local
    with postruns() as done:
        add.celery_task.apply_async(args=(2, 3), task_id="plain-add-call")
        assert done.wait("plain-add-call"), "the worker did not run the plain Celery call"
    assert done.retval("plain-add-call") == 5


SUBMITTER = """
import sys
from tests.support.apps import make_app
app = make_app(sys.argv[1], session=sys.argv[2])
import tests.tasks as t
from celery_graph import workflow
run = (t.step.bind(id="a", name="a", delay=0.5) >> t.step.bind(id="b", name="b")).apply_async(
    tag=sys.argv[3])
print(run.id)
"""


def test_run_finishes_after_the_submitting_process_exited(app, redis_url, tag):
    from tests.support.fixtures import SESSION

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", SUBMITTER, redis_url, SESSION, tag],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    run_id = proc.stdout.strip().splitlines()[-1]
    run = GraphRun(run_id, app=app)
    assert run.get(timeout=20) == "b"
    assert read_trace(tag) == ["start:a", "end:a", "start:b", "end:b"]


def test_cancel_stops_pending_nodes(app, tag):
    from celery_graph.protocol import task_id_for

    first = step.bind(id="first", name="first", delay=1.0)
    flow = first >> step.bind(id="second", name="second")
    with postruns() as done:
        run = flow.apply_async(tag=tag)
        assert run.cancel() is True
        assert run.cancel() is False  # already ended
        with pytest.raises(RunCancelled, match=run.id):
            run.get(timeout=10)
        assert run.status().state == "cancelled"
        # the first node may run (it may have started); once its message is processed,
        # the next one was never started
        assert done.wait(task_id_for(run.id, "first"))
    assert "start:second" not in read_trace(tag)
    assert run.status().nodes["second"].state == "cancelled"
