"""Real Redis topologies on loopback for the scale-out tests: a Redis Cluster of three
primaries, and a primary with a replica watched by a Sentinel. Built from the same
redis-server binary as the private Redis (Debian's redis-server, whose redis-cli creates
the cluster); started and stopped by the tests themselves."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import redis

from celery_graph.testing import PortTaken, PrivateRedis, find_server_binary, free_port
from tests.support.helpers import starts_processes


def redis_cli() -> str:
    """redis-cli (or valkey-cli) next to the server binary, or on PATH."""
    server = Path(find_server_binary())
    for name in ("redis-cli", "valkey-cli"):
        beside = server.with_name(name)
        if beside.exists():
            return str(beside)
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError(
        "no redis-cli: install Debian's redis-tools (apt-get install "
        "redis-tools) to create a Redis Cluster"
    )


def _wait(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


@starts_processes
class PrivateCluster:
    """Three primaries, no replicas, every slot covered."""

    def __init__(self, size: int = 3) -> None:
        self.nodes = [self._node() for _ in range(size)]

    @staticmethod
    def _node() -> PrivateRedis:
        # the cluster bus gets a port of its own (the default, port + 10000, may not exist)
        return PrivateRedis(
            extra_args=[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                "--cluster-port",
                str(free_port()),
            ]
        )

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> PrivateCluster:
        for i in range(len(self.nodes)):
            for _ in range(4):  # its bus port taken meanwhile: a node with other ports
                try:
                    self.nodes[i].start()
                    break
                except PortTaken:
                    self.nodes[i].cleanup()
                    self.nodes[i] = self._node()
            else:
                self.nodes[i].start()
        subprocess.run(
            [
                redis_cli(),
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for node in self.nodes:
            client = redis.Redis(port=node.port)
            _wait(
                lambda c=client: c.cluster("info")["cluster_state"] == "ok",
                30,
                "the cluster to cover every slot",
            )
        return self

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


@starts_processes
class PrivateSentinel:
    """A primary, a replica of it, and one Sentinel (quorum 1) watching them as 'graphs'."""

    MASTER = "graphs"

    def __init__(self) -> None:
        self.primary = PrivateRedis(appendonly=True)
        self.replica = PrivateRedis(appendonly=True, extra_args=["--replicaof", "127.0.0.1", "0"])
        self.sentinel_port = free_port()
        self.dir = self.primary.dir
        self.sentinel: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"sentinel://127.0.0.1:{self.sentinel_port}/0"

    def start(self) -> PrivateSentinel:
        self.primary.start()
        self.replica.extra_args = ["--replicaof", "127.0.0.1", str(self.primary.port)]
        self.replica.start()
        _wait(
            lambda: (
                redis.Redis(port=self.replica.port).info("replication")["master_link_status"]
                == "up"
            ),
            30,
            "the replica to sync",
        )
        conf = Path(self.dir) / "sentinel.conf"
        conf.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {self.MASTER} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {self.MASTER} 1000\n"
            f"sentinel failover-timeout {self.MASTER} 5000\n"
        )
        self.sentinel = subprocess.Popen(
            [find_server_binary(), str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.sentinel_port)
        _wait(
            lambda: client.sentinel_master(self.MASTER)["num-slaves"] >= 1,
            30,
            "the sentinel to see the replica",
        )
        return self

    def primary_port(self) -> int:
        _host, port = redis.Redis(port=self.sentinel_port).sentinel_get_master_addr_by_name(
            self.MASTER
        )
        return int(port)

    def failover(self, timeout: float = 30) -> None:
        """A planned failover: the replica becomes the primary once it has caught up."""
        before = self.primary_port()
        redis.Redis(port=self.sentinel_port).execute_command("SENTINEL", "FAILOVER", self.MASTER)
        _wait(lambda: self.primary_port() != before, timeout, "the failover")

    def cleanup(self) -> None:
        if self.sentinel is not None:
            self.sentinel.kill()
            self.sentinel.wait(10)
        self.replica.cleanup()
        self.primary.cleanup()
        if os.path.exists(self.dir):
            shutil.rmtree(self.dir, ignore_errors=True)


class VersionRelay:
    """A TCP relay in front of a real Redis that reports an older server version.

    Every byte passes through unchanged except the ``redis_version:`` line of INFO,
    rewritten to a 6.0 release of the same length (so RESP lengths stay right). The
    binaries at hand are all 6.2 or newer; this is how a test meets a server too old.
    """

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.reported = ""
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _older(self, data: bytes) -> bytes:
        marker = b"redis_version:"
        at = data.find(marker)
        if at < 0:
            return data
        start = at + len(marker)
        end = data.index(b"\r\n", start)
        real = data[start:end]
        fake = b"6.0." + b"9" * (len(real) - 4)
        self.reported = fake.decode()
        return data[:start] + fake + data[end:]

    def _pipe(self, src: socket.socket, dst: socket.socket, rewrite: bool) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(self._older(chunk) if rewrite else chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()
