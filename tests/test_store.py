"""The content-addressed graph store, on a real Redis."""

from __future__ import annotations

import zlib

import pytest

from celery_graph import GraphCorrupted, GraphNotFound
from celery_graph.codec import sha256
from celery_graph.keys import Keys
from celery_graph.state import state_for
from celery_graph.state.connection import packed, pooled_connection
from celery_graph.state.graphs import GraphStore
from tests.tasks import add, audit, double, extract, transform


def test_same_graph_submitted_1000_times_is_stored_once(app, rclient):
    flow = extract >> (transform | audit)
    spec = flow.compile()
    keys = Keys(app.conf.graph_key_prefix)
    key = keys.graph(spec.graph_id)
    state = state_for(app)
    writes = [state.graphs.put(spec) for _ in range(1000)]
    # the one real submission below also stores (or finds) the same key
    flow.apply_async().get(timeout=20)
    assert writes.count(True) <= 1 and writes[1:].count(True) == 0
    assert rclient.exists(key) == 1
    assert len(rclient.keys(keys.graph("*"))) >= 1
    assert zlib.decompress(rclient.get(key)) == spec.blob
    assert 0 < rclient.ttl(key) <= state.settings.store_ttl


def test_graph_id_is_sha256_of_canonical_spec_and_stable():
    a = (extract >> (transform | audit)).compile()
    b = (extract >> (audit | transform)).compile()  # same graph, other member order
    assert a.graph_id == b.graph_id == sha256(a.blob)
    c = (extract >> (transform.bind(factor=2) | audit)).compile()
    assert c.graph_id != a.graph_id


def test_sliding_ttl_is_refreshed_on_load(app, rclient):
    state = state_for(app)
    spec = (add >> double).compile()
    state.graphs.put(spec)
    key = state.keys.graph(spec.graph_id)
    rclient.expire(key, 50)
    fresh = GraphStore(state.client, state.keys, ttl=5000, cache_size=4)
    assert fresh.load(spec.graph_id).graph_id == spec.graph_id
    assert rclient.ttl(key) > 4000


def test_corrupted_blob_is_refused_not_run(app, rclient):
    state = state_for(app)
    spec = (add.bind(id="corrupt_me") >> double).compile()
    key = state.keys.graph(spec.graph_id)
    tampered = spec.blob.replace(b'"corrupt_me"', b'"corrupt_it"')
    rclient.set(key, zlib.compress(tampered), ex=60)
    fresh = GraphStore(state.client, state.keys, ttl=60, cache_size=4)
    with pytest.raises(GraphCorrupted, match=f"not {spec.graph_id}"):
        fresh.load(spec.graph_id)
    rclient.set(key, b"not zlib at all", ex=60)
    with pytest.raises(GraphCorrupted, match="does not decompress"):
        fresh.load(spec.graph_id)
    rclient.delete(key)


def test_missing_graph_is_a_clear_error(app):
    state = state_for(app)
    fresh = GraphStore(state.client, state.keys, ttl=60, cache_size=4)
    with pytest.raises(GraphNotFound, match="expired"):
        fresh.load("0" * 64)


def cached(store: GraphStore, graph_id: str) -> bool:
    """Held in the store's process-local LRU cache."""
    return graph_id in store._cache


def test_lru_cache_is_bounded(app):
    state = state_for(app)
    store = GraphStore(state.client, state.keys, ttl=60, cache_size=3)
    specs = [add.bind(id=f"lru{i}").compile() for i in range(5)]
    for spec in specs:
        store.put(spec)
    assert [cached(store, s.graph_id) for s in specs] == [False, False, True, True, True]
    store.load(specs[0].graph_id)  # a miss reads Redis and evicts the oldest entry
    assert cached(store, specs[0].graph_id) and not cached(store, specs[2].graph_id)


# -- the protocol bytes written by hand (state/connection.py: packed) -------------------

_COMMANDS = [
    ("SETEX", "celery-task-meta-r:s1", 600, b'{"status": "SUCCESS", "result": null}'),
    ("PUBLISH", "celery-task-meta-r:s1", b"\x00\xff binary"),
    ("EVALSHA", "a" * 40, 2, "run:{r}", "run:{r}:nodes", "s1", "\u00e9t\u00e9 \U0001f600"),
    ("HSET", "k", "f", 1.5, "g", -7, "h", 10**30, "i", float("inf"), "j", ""),
    ("SET", "big", b"x" * 100_000),
]


@pytest.fixture()
def conn(rclient):
    """A connection of the test client's pool, for commands written and read by hand."""
    connection = pooled_connection(rclient.connection_pool)
    try:
        yield connection
    finally:
        rclient.connection_pool.release(connection)


def test_packed_commands_are_the_bytes_redis_py_writes(conn):
    chunks = packed(conn, _COMMANDS)
    assert b"".join(chunks) == b"".join(conn.pack_commands(_COMMANDS))
    # a long argument is sent as it is, not copied into the bytes around it
    assert any(c is _COMMANDS[-1][-1] for c in chunks)
    # anything else is redis-py's: a two-word name, an int subclass, a bool (refused)
    odd = [("CLIENT SETNAME", "x"), ("SET", "k", type("Big", (int,), {})(3))]
    assert packed(conn, odd) == conn.pack_commands(odd)
    with pytest.raises(Exception, match="bool"):
        packed(conn, [("SET", "k", True)])


def test_packed_commands_run_on_the_server(rclient, conn):
    key = "cgtest:packed:\u00e9"
    try:
        conn.send_packed_command(packed(conn, [("SET", key, b"x" * 100_000), ("STRLEN", key)]))
        assert rclient.parse_response(conn, "SET") is True
        assert rclient.parse_response(conn, "STRLEN") == 100_000
    finally:
        rclient.delete(key)


def test_a_connection_that_does_not_write_utf8_packs_with_redis_py(conn):
    saved = conn.encoder.encoding
    try:
        conn.encoder.encoding = "latin-1"
        commands = [("SET", "k", "\u00e9")]
        assert packed(conn, commands) == conn.pack_commands(commands)
        assert b"\xe9" in b"".join(packed(conn, commands))
    finally:
        conn.encoder.encoding = saved
