"""Celery-style signals celery-graph sends (``celery.utils.dispatch.Signal``).

Connect a receiver like any Celery signal::

    from celery_graph.signals import run_finished

    @run_finished.connect
    def on_end(sender=None, run_id=None, state=None, **kwargs):
        ...

- ``run_started``: a run was created (sent once, by the process that submitted it);
  arguments ``app``, ``run_id``, ``state`` (celery-graph's ``State``), ``flow`` (the flow
  name the run records, "" for none).
- ``run_finished``: a run ended, succeeded, failed or cancelled (sent once, by the process
  whose call ended it); arguments ``app``, ``run_id``, ``state``, and ``record`` (the run
  record as a dict of text, read after it ended) when the sender read it (absent otherwise).
- ``graph_task_declared``: ``@task`` declared a graph task (sender: the function), or
  ``node()`` made an existing task a node (sender: the task); the worker options and
  bootstep attach to the apps that exist then and to apps finalized later
  (``worker/attach.py``).

Receivers run in the sending process; an exception in one is logged, not raised.
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

run_started = Signal(name="run_started")
run_finished = Signal(name="run_finished")
graph_task_declared = Signal(name="graph_task_declared")

__all__ = ["graph_task_declared", "run_finished", "run_started"]
