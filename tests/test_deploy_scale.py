"""Keeps deploy/cluster/ and deploy/sentinel/ honest without Docker: each Redis service is
started here with the exact flags its compose file gives it (service names replaced by
``localhost``, ports by free ones), the cluster is created by the file's own init command,
and celery-graph connects with the URL and transport options the file's workers get."""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml
from celery import Celery

from celery_graph.config import Settings
from celery_graph.state import State
from celery_graph.testing import PrivateRedis, find_server_binary, free_port
from tests.support.helpers import starts_processes
from tests.support.servers import _wait, redis_cli
from tests.tasks import audit, extract, load, transform

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SPEC = (extract >> (transform | audit) >> load).compile()


def compose(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name / "docker-compose.yml").read_text())


def server_args(command: list[str], names: dict[str, str]) -> list[str]:
    """A service's redis-server flags, without the binary and the port (the test picks
    them), its service names replaced."""
    args = [names.get(a, a) for a in command[1:]]
    if "--port" in args:
        i = args.index("--port")
        del args[i : i + 2]
    return args


def with_ports(text: str, ports: dict[str, int], default: int) -> str:
    """``text`` with every ``service:default`` made ``localhost:port``."""
    for service, port in ports.items():
        text = text.replace(f"{service}:{default}", f"localhost:{port}")
        text = text.replace(f"{service} {default}", f"localhost {port}")
    return text


def stored_and_read(settings: Settings) -> State:
    state = State(settings)
    state.ping()
    state.graphs.put(SPEC)
    fresh = State(settings)  # its own graph cache: the load reads Redis
    assert fresh.graphs.load(SPEC.graph_id).graph_id == SPEC.graph_id
    return state


@pytest.fixture()
@starts_processes
def servers() -> Iterator[list[PrivateRedis]]:
    started: list[PrivateRedis] = []
    yield started
    for server in started:
        server.cleanup()


def test_the_cluster_compose_file_builds_a_cluster_celery_graph_uses(servers) -> None:
    c = compose("cluster")
    nodes = sorted(s for s in c["services"] if s.startswith("graph-") and s != "graph-init")
    assert len(nodes) == 3
    names = dict.fromkeys(nodes, "localhost")
    ports = {}
    for name in nodes:
        command = c["services"][name]["command"]
        assert command[0] == "redis-server" and "--cluster-enabled" in command
        server = PrivateRedis(
            extra_args=[*server_args(command, names), "--cluster-port", str(free_port())]
        )
        servers.append(server.start())
        ports[name] = server.port
    # the file's own init command, run twice: the second run sees a cluster and stops
    init = with_ports(c["services"]["graph-init"]["command"][0], ports, 6379)
    init = init.replace("redis-cli", shlex.quote(redis_cli()))
    for _ in range(2):
        done = subprocess.run(["sh", "-c", init], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    first = redis.Redis(port=ports[nodes[0]])
    _wait(lambda: first.cluster("info")["cluster_state"] == "ok", 30, "the cluster")
    # the nodes announce their names, so clients reach them by name
    assert first.config_get("cluster-preferred-endpoint-type") == {
        "cluster-preferred-endpoint-type": "hostname"
    }

    env = c["x-app-env"]
    url = with_ports(env["CELERY_GRAPH_REDIS_URL"], ports, 6379)
    assert url.startswith("redis+cluster://localhost:")
    app = Celery("cgtest_deploy_cluster", broker="memory://", set_as_current=False)
    app.conf.graph_redis_url = url
    state = stored_and_read(Settings.from_app(app))
    assert type(state.client).__name__ == "RedisCluster"


def test_the_sentinel_compose_file_fails_over_under_celery_graph(servers, tmp_path) -> None:
    c = compose("sentinel")
    names = {"graph-primary": "127.0.0.1", "graph-replica": "127.0.0.1"}
    primary_cmd = c["services"]["graph-primary"]["command"]
    primary = PrivateRedis(extra_args=server_args(primary_cmd, names))
    servers.append(primary.start())
    replica_cmd = [
        str(primary.port) if a == "6379" else a for a in c["services"]["graph-replica"]["command"]
    ]
    replica = PrivateRedis(extra_args=server_args(replica_cmd, names))
    servers.append(replica.start())
    _wait(
        lambda: redis.Redis(port=replica.port).info("replication")["master_link_status"] == "up",
        30,
        "the replica to sync",
    )

    # the sentinels' own start command writes their configuration: run it (minus the exec)
    script = c["x-sentinel"]["command"][0]
    printf = script.split(" > /tmp/sentinel.conf")[0]
    sentinels = []
    for _ in range(3):
        port = free_port()
        conf = tmp_path / f"sentinel-{port}.conf"
        text = subprocess.run(
            ["sh", "-c", printf], check=True, capture_output=True, text=True
        ).stdout
        text = text.replace("port 26379", f"port {port}\nbind 127.0.0.1\ndir {tmp_path}")
        text = text.replace("graph-primary 6379", f"127.0.0.1 {primary.port}")
        text = text.replace(
            "down-after-milliseconds graph 5000", "down-after-milliseconds graph 1000"
        )
        conf.write_text(text)
        proc = subprocess.Popen(
            [find_server_binary(), str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sentinels.append((port, proc))
    try:
        for port, _proc in sentinels:
            s = redis.Redis(port=port)
            _wait(
                lambda s=s: s.sentinel_master("graph")["num-other-sentinels"] >= 2,
                30,
                "the sentinels to find each other",
            )

        env = c["x-app-env"]
        url = env["CELERY_GRAPH_REDIS_URL"]
        for i, (port, _proc) in enumerate(sentinels, 1):
            url = url.replace(f"sentinel-{i}:26379", f"127.0.0.1:{port}")
        app = Celery("cgtest_deploy_sentinel", broker="memory://", set_as_current=False)
        app.conf.graph_redis_url = url
        app.conf.graph_redis_transport_options = json.loads(
            env["CELERY_GRAPH_REDIS_TRANSPORT_OPTIONS"]
        )
        state = stored_and_read(Settings.from_app(app))

        sentinel = redis.Redis(port=sentinels[0][0])
        sentinel.execute_command("SENTINEL", "FAILOVER", "graph")
        _wait(
            lambda: int(sentinel.sentinel_get_master_addr_by_name("graph")[1]) == replica.port,
            30,
            "the failover",
        )
        # the same client follows the new primary, and the graph is still there
        _wait(
            lambda: state.client.set("cgtest:deploy:after", "1") is True,
            30,
            "writes on the new primary",
        )
        assert state.client.get("cgtest:deploy:after") == b"1"
        assert State(Settings.from_app(app)).graphs.load(SPEC.graph_id).graph_id == SPEC.graph_id
    finally:
        for _port, proc in sentinels:
            proc.kill()
            proc.wait(10)
