"""The private Redis servers the tests and the README's commands start
(``celery_graph.testing.PrivateRedis``, the tests' ``PrivateCluster``): a port picked with
``free_port`` is free again until the server binds it, and another process may take it
meanwhile (two Pythons' test runs side by side in CI: one run's cluster failed to start so,
its log saying "Address already in use" and its error nothing)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

from celery_graph.testing import PortTaken, PrivateRedis
from tests.support.servers import PrivateCluster

pytestmark = pytest.mark.slow  # Redis servers started


@contextmanager
def _taken() -> Iterator[int]:
    """A port another process's socket listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def test_a_picked_port_taken_before_the_server_binds_it_is_picked_again():
    server = PrivateRedis()
    with _taken() as port:
        server.port = port  # taken between free_port and the server's bind
        try:
            server.start()
            assert server.port != port
            assert redis.Redis(port=server.port).ping()
        finally:
            server.cleanup()


def test_a_given_port_that_is_taken_fails_saying_why():
    with _taken() as port:
        server = PrivateRedis(port=port)
        try:
            with pytest.raises(PortTaken, match="Address already in use"):
                server.start()
        finally:
            server.cleanup()


def test_a_cluster_node_whose_bus_port_is_taken_starts_with_other_ports():
    cluster = PrivateCluster()
    args = cluster.nodes[0].extra_args
    with _taken() as port:
        args[args.index("--cluster-port") + 1] = str(port)
        try:
            cluster.start()
            assert cluster.nodes[0].extra_args[args.index("--cluster-port") + 1] != str(port)
            client = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
            client.set("cgtest:private-cluster", "1")
            assert client.get("cgtest:private-cluster") == b"1"
        finally:
            cluster.cleanup()
