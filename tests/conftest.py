"""Loads the harness (tests/support/, docs/testing.md): the session's fixtures
(tests/support/fixtures.py), the test tiers (tests/support/tiers.py: the ``slow`` mark
set by fixture, the xdist groups, the check that a fast test starts no process) and the
work tree's bytecode, written once per session (tests/support/bytecode.py).

``SESSION``, ``ROOT``, ``RABBITMQ_URL`` and ``rabbitmq_reachable`` stay importable from
here for the tests that import them by this name."""

from __future__ import annotations

from tests.support import ROOT
from tests.support.bytecode import pytest_configure
from tests.support.cpu import (
    pytest_runtest_makereport,
    pytest_runtest_setup,
    pytest_sessionfinish,
)
from tests.support.fixtures import (
    RABBITMQ_URL,
    SESSION,
    amqp_app,
    any_app,
    app,
    celery_app,
    cluster_app,
    cluster_url,
    eager_off,
    exact_counts,
    published,
    rabbitmq_reachable,
    rclient,
    redis_url,
    short_lease_workers,
    started,
    tag,
    worker,
)
from tests.support.tiers import (
    SLOW_APPS,
    TIMING_BOUND,
    pytest_collection_modifyitems,
    pytest_runtest_protocol,
)

__all__ = [
    "RABBITMQ_URL",
    "ROOT",
    "SESSION",
    "SLOW_APPS",
    "TIMING_BOUND",
    "amqp_app",
    "any_app",
    "app",
    "celery_app",
    "cluster_app",
    "cluster_url",
    "eager_off",
    "exact_counts",
    "published",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_runtest_makereport",
    "pytest_runtest_protocol",
    "pytest_runtest_setup",
    "pytest_sessionfinish",
    "rabbitmq_reachable",
    "rclient",
    "redis_url",
    "short_lease_workers",
    "started",
    "tag",
    "worker",
]
