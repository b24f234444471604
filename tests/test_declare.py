"""What sending a node message declares (dispatch.KnownQueues): Celery asks kombu to declare
the message's queue with every message; kombu skips what its connection declared already,
and celery-graph leaves those out before kombu binds a copy of each to find that out. A
queue the connection has not declared (a new queue, a reconnection) is declared as before,
on Redis and on RabbitMQ, and no message is lost."""

from __future__ import annotations

import dataclasses
import os
import uuid

import kombu.common
import pytest
import redis
from celery import Celery

from celery_graph import dispatch
from tests.conftest import RABBITMQ_URL, rabbitmq_reachable
from tests.support.helpers import wait_for
from tests.tasks import step


def _spec(queue: str):
    node = dataclasses.replace(step, options=(("queue", queue),))
    return node.bind(id="only", name="x").compile()


def _declarations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the entities kombu is asked to declare from now on (its
    ``maybe_declare``, which the producer calls for each entity in ``declare``)."""
    asked: list[str] = []
    real = kombu.common.maybe_declare

    def spy(entity, *args, **kwargs):
        asked.append(entity.name)
        return real(entity, *args, **kwargs)

    monkeypatch.setattr(kombu.messaging, "maybe_declare", spy)
    return asked


def _forget_declarations(app: Celery) -> None:
    """What kombu does on a reconnection: the pool's connections forget what they
    declared."""
    with app.producer_or_acquire() as producer:
        producer.connection.declared_entities.clear()


def test_a_queue_declared_on_the_connection_is_not_asked_for_again(
    celery_app, redis_url, monkeypatch
):
    queue = f"cgtest-declare-{uuid.uuid4().hex[:8]}"
    spec = _spec(queue)
    client = redis.Redis.from_url(redis_url)
    try:
        asked = _declarations(monkeypatch)
        dispatch.publish_nodes(celery_app, spec, uuid.uuid4().hex, ["only"])
        assert asked == [queue]  # a queue new to the connection: declared
        binding = f"_kombu.binding.{queue}"
        assert client.exists(binding)  # kombu's Redis transport keeps its binding
        for _ in range(3):
            dispatch.publish_nodes(celery_app, spec, uuid.uuid4().hex, ["only"])
        assert asked == [queue]  # known: not asked for again
        assert client.llen(queue) == 4  # every message is in the queue

        # after a reconnection kombu has forgotten it: asked for again
        _forget_declarations(celery_app)
        dispatch.publish_nodes(celery_app, spec, uuid.uuid4().hex, ["only"])
        assert asked == [queue, queue]
        assert client.llen(queue) == 5
    finally:
        client.delete(queue, f"_kombu.binding.{queue}")


def test_undeclared_keeps_what_kombu_would_declare(celery_app):
    """The test is kombu's own: a cacheable entity whose hash the connection holds."""
    name = f"cgtest-declare-{uuid.uuid4().hex[:8]}"
    known = kombu.Queue(name)
    fresh = kombu.Queue(f"{name}-new")
    expiring = kombu.Queue(f"{name}-exp", queue_arguments={"x-expires": 60_000})
    auto = kombu.Queue(f"{name}-auto", auto_delete=True)
    with celery_app.producer_or_acquire() as producer:
        declared = producer.connection.declared_entities
        declared.update({hash(known), hash(expiring), hash(auto)})
        try:
            entities = [known, fresh, expiring, auto]
            assert dispatch.undeclared(producer, entities) == [fresh, expiring, auto]
        finally:
            declared.difference_update({hash(known), hash(expiring), hash(auto)})


def test_on_rabbitmq_a_new_queue_is_declared_and_keeps_every_message(monkeypatch):
    if not rabbitmq_reachable():
        if os.environ.get("CI"):  # as the RabbitMQ fixtures: CI has one
            pytest.fail(f"RabbitMQ at {RABBITMQ_URL} is not reachable and CI is set")
        pytest.skip(f"RabbitMQ at {RABBITMQ_URL} is not reachable")
    app = Celery("cgtest_declare", broker=RABBITMQ_URL, set_as_current=False)
    queue = f"cgtest-declare-{uuid.uuid4().hex[:8]}"
    spec = _spec(queue)
    asked = _declarations(monkeypatch)
    try:
        for _ in range(3):
            dispatch.publish_nodes(app, spec, uuid.uuid4().hex, ["only"])
        assert asked == [queue]
        # RabbitMQ drops a message sent to a queue nobody declared: all three get there
        # (published without confirms: the count may lag a moment behind, seen from
        # another connection)
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            wait_for(
                lambda: channel.queue_declare(queue=queue, passive=True).message_count == 3,
                10,
                "the three messages in the RabbitMQ queue",
            )
    finally:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
        app.close()
