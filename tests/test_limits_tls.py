"""Celery's per-task time limits pass through; graph state over TLS (rediss://) works."""

from __future__ import annotations

import subprocess
import time

import pytest
import redis

from celery_graph import GraphRun, RunFailed
from celery_graph.testing import PrivateRedis, find_server_binary, free_port
from tests.support.helpers import starts_processes
from tests.support.processes import Workers
from tests.tasks import audit, extract, load, over_hard_limit, over_soft_limit, step, transform


@pytest.fixture()
@starts_processes
def prefork_workers(redis_url):
    pool = Workers(redis_url, concurrency=1, pool="prefork")
    pool.start("limits")
    try:
        yield pool
    finally:
        pool.stop()


@pytest.mark.parametrize(
    ("node", "exc_type"),
    [(over_soft_limit, "SoftTimeLimitExceeded"), (over_hard_limit, "TimeLimitExceeded")],
)
def test_celery_time_limits_fail_the_run_naming_the_node(prefork_workers, node, exc_type, tag):
    started = time.monotonic()
    run = (node >> step).submit({"tag": tag}, app=prefork_workers.app)
    with pytest.raises(RunFailed) as info:
        GraphRun(run.id, app=prefork_workers.app).get(timeout=30)
    assert info.value.node_id == node.id
    assert info.value.exc_type == exc_type
    assert time.monotonic() - started < 5  # the limit cut the 5-10 s node short
    assert (
        GraphRun(run.id, app=prefork_workers.app).status().nodes["step"].state == "upstream_failed"
    )


def _make_certs(directory) -> dict[str, str]:
    paths = {
        n: str(directory / f"{n}") for n in ("ca.key", "ca.crt", "srv.key", "srv.csr", "srv.crt")
    }

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=cgtest-ca",
        # Python 3.13 verifies strictly (VERIFY_X509_STRICT): a CA says what it is for
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        paths["ca.key"],
        "-out",
        paths["ca.crt"],
    )
    ssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        paths["srv.key"],
        "-out",
        paths["srv.csr"],
    )
    ext = directory / "ext.cnf"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    ssl(
        "x509",
        "-req",
        "-in",
        paths["srv.csr"],
        "-CA",
        paths["ca.crt"],
        "-CAkey",
        paths["ca.key"],
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        paths["srv.crt"],
        "-extfile",
        str(ext),
    )
    return paths


@pytest.mark.slow
def test_graph_state_over_tls(redis_url, tmp_path):
    binary = find_server_binary()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    if "valkey" in binary or "redis-server" not in binary:
        pytest.skip(f"{binary} may be built without TLS")
    certs = _make_certs(tmp_path)
    tls_port = free_port()
    server = PrivateRedis(
        extra_args=[
            "--tls-port",
            str(tls_port),
            "--tls-cert-file",
            certs["srv.crt"],
            "--tls-key-file",
            certs["srv.key"],
            "--tls-ca-cert-file",
            certs["ca.crt"],
            "--tls-auth-clients",
            "no",
        ]
    ).start()
    url = f"rediss://127.0.0.1:{tls_port}/0?ssl_cert_reqs=required&ssl_ca_certs={certs['ca.crt']}"
    pool = None
    try:
        assert redis.Redis.from_url(url).ping(), version
        pool = Workers(redis_url, graph_url=url)  # broker: plain Redis; graph state: TLS
        pool.start("tls")
        run = (extract >> (transform | audit) >> load).submit(app=pool.app)
        assert GraphRun(run.id, app=pool.app).get(timeout=30) == {"rows": [10, 20, 30], "count": 3}
        tls_client = redis.Redis.from_url(url)
        assert tls_client.hget(f"{pool.prefix}:run:{{{run.id}}}", "status") == b"succeeded"
    finally:
        if pool is not None:
            pool.stop()
        server.cleanup()
