"""Redis URLs with a password and an ACL user work end to end; messages are JSON."""

from __future__ import annotations

import json

import pytest
import redis

from celery_graph import GraphRun
from celery_graph.testing import PrivateRedis
from tests.support.processes import Workers
from tests.tasks import UNCONSUMED_QUEUE, audit, extract, load, transform, unconsumed

pytestmark = pytest.mark.slow  # a Redis with ACLs and a worker subprocess


def test_acl_user_and_password_url_runs_a_graph():
    server = PrivateRedis().start()
    pool = None
    try:
        admin = redis.Redis.from_url(server.url)
        admin.execute_command("ACL", "SETUSER", "graphs", "on", ">s3cret-pw", "~*", "&*", "+@all")
        admin.execute_command("ACL", "SETUSER", "default", "off")
        url = f"redis://graphs:s3cret-pw@127.0.0.1:{server.port}/0"
        pool = Workers(url)
        pool.start("acl")
        run = (extract >> (transform | audit) >> load).submit(app=pool.app)
        assert GraphRun(run.id, app=pool.app).get(timeout=30) == {"rows": [10, 20, 30], "count": 3}
        anonymous = redis.Redis(port=server.port)
        try:
            anonymous.ping()
            raise AssertionError("the default user should be off")
        except redis.AuthenticationError:
            pass
        except redis.ResponseError as exc:
            assert "NOAUTH" in str(exc) or "disabled" in str(exc)
    finally:
        if pool is not None:
            pool.stop()
        server.cleanup()


def test_messages_on_the_broker_are_json_not_pickle(app, rclient):
    rclient.delete(UNCONSUMED_QUEUE)  # what an earlier test's run left there
    run = unconsumed.as_graph().apply_async()
    try:
        raw = rclient.lindex(UNCONSUMED_QUEUE, 0)
        message = json.loads(raw)
        assert message["content-type"] == "application/json"
        assert message["headers"]["id"] == f"{run.id}:unconsumed"
        assert len(raw) < 2048
    finally:
        run.cancel()
        rclient.delete(UNCONSUMED_QUEUE)
