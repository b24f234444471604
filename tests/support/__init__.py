"""The test harness (docs/testing.md): one package for what the tests share.

- ``ROOT``: the work tree (here, once);
- ``apps``: the one app factory (``new_app``) and its presets;
- ``processes``: the one way to start a worker or other subprocess (``Process``) and the
  starters built on it;
- ``fixtures``: the session's fixtures (private Redis, apps, the in-process worker, the
  RabbitMQ and Redis Cluster apps), which tests/conftest.py loads;
- ``tiers``: the ``slow`` mark set by fixture, the xdist groups and the check that a fast
  test starts no process;
- ``helpers``: waiting with a deadline, the session's name, ``starts_processes``, tools
  ``make`` installs, trace arithmetic;
- ``servers``: a private Redis Cluster and Sentinel; ``counts``: the node counts check;
  ``chaos``: the chaos check; ``beat``, ``ui``, ``ui_fixtures``, ``browser``: what the
  beat, dashboard and browser tests share.

Modules that worker subprocesses import by name (tests.tasks, tests.brokerapp,
tests.apps.*, ...) stay where they are: their names are in task names and ``-A`` options."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
