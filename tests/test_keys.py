"""Key layout: every key under the prefix, one hash tag per run, everything expires."""

from __future__ import annotations

import pytest

from celery_graph import workflow
from celery_graph.keys import Keys, check_prefix, key_pattern
from celery_graph.state import state_for
from tests.tasks import audit, extract, join_count, load, step, transform


def keys_under(rclient, prefix: str) -> set[str]:
    return {k.decode() for k in rclient.scan_iter(match=f"{prefix}:*", count=1000)}


@pytest.fixture()
def fresh_prefix(app):
    """Run the test under prefixes no other test uses; restore the app's afterwards."""
    old = app.conf.graph_key_prefix
    yield lambda p: app.conf.update(graph_key_prefix=p)
    app.conf.graph_key_prefix = old


def test_two_prefixes_on_one_redis_are_isolated(app, rclient, fresh_prefix, tag):
    a, b = f"iso-a-{tag}:wf", f"iso-b-{tag}:wf"
    flow = extract >> (transform | audit) >> load
    fresh_prefix(a)
    run_a = flow.apply_async()
    run_a.get(timeout=20)
    keys_a = keys_under(rclient, a)
    fresh_prefix(b)
    run_b = flow.apply_async(n=2)
    run_b.get(timeout=20)
    keys_b = keys_under(rclient, b)
    assert keys_a and keys_b
    assert not any(run_b.id in k for k in keys_a)
    assert not any(run_a.id in k for k in keys_b)
    # every key that mentions one of the runs lives under that run's prefix, but the
    # node results Celery's result backend keeps under its own names (the app has one)
    backend = "celery-task-meta-"
    for key in (k.decode() for k in rclient.scan_iter(match=f"*{run_a.id}*")):
        assert key.startswith((a + ":", backend)), key
    for key in (k.decode() for k in rclient.scan_iter(match=f"*{run_b.id}*")):
        assert key.startswith((b + ":", backend)), key


def test_every_key_matches_the_pattern_and_shares_the_run_hash_tag(app, rclient, fresh_prefix, tag):
    prefix = f"pattern-{tag}"
    fresh_prefix(prefix)
    with workflow("diamond") as wf:
        step.bind(id="a") >> step.bind(id="b") >> join_count
        step.bind(id="a") >> step.bind(id="c") >> join_count
    run = wf.apply_async(tag=tag)
    run.get(timeout=20)
    pattern = key_pattern(prefix)
    found = keys_under(rclient, prefix)
    assert any(":join:join_count" in k for k in found)
    for key in found:
        assert pattern.match(key), key
        if ":run:" in key:
            assert f"{{{run.id}}}" in key, key


def test_every_key_of_a_finished_run_expires(app, rclient, fresh_prefix, tag):
    prefix = f"ttl-{tag}"
    fresh_prefix(prefix)
    app.conf.graph_result_ttl = 120
    try:
        with workflow("diamond") as wf:
            step.bind(id="a") >> step.bind(id="b") >> join_count
            step.bind(id="a") >> step.bind(id="c") >> join_count
        run = wf.apply_async(tag=tag)
        run.get(timeout=20)
    finally:
        app.conf.graph_result_ttl = None
    found = keys_under(rclient, prefix)
    assert len([k for k in found if run.id in k]) >= 5
    for key in found:
        ttl = rclient.ttl(key)
        if ttl == -2:
            continue  # gone since the listing (the reconciler dropped the ended run's index)
        assert ttl > 0, f"{key} has no expiry"
        if run.id in key:
            assert ttl <= 120, f"{key} keeps {ttl} s, more than graph_result_ttl"


def test_failed_run_keys_expire_too(app, rclient, fresh_prefix, tag):
    from celery_graph import RunFailed
    from tests.tasks import boom

    prefix = f"ttlfail-{tag}"
    fresh_prefix(prefix)
    run = ((step | boom) >> join_count).apply_async(tag=tag)
    with pytest.raises(RunFailed):
        run.get(timeout=20)
    for key in keys_under(rclient, prefix):
        ttl = rclient.ttl(key)
        assert ttl > 0 or ttl == -2, f"{key} has no expiry"  # -2: gone since the listing


def test_key_builder_and_prefix_check():
    k = Keys("myapp:workflows")
    assert k.run("ab" * 16) == "myapp:workflows:run:{" + "ab" * 16 + "}"
    assert k.join("ab" * 16, "load") == "myapp:workflows:run:{" + "ab" * 16 + "}:join:load"
    for bad in ["", ":x", "x:", "a::b", "a b", "a{b}", None]:
        with pytest.raises(ValueError):
            check_prefix(bad)  # type: ignore[arg-type]


def test_prefix_from_env_when_app_sets_none(app, monkeypatch):
    old = app.conf.graph_key_prefix
    app.conf.graph_key_prefix = None
    try:
        monkeypatch.setenv("CELERY_GRAPH_KEY_PREFIX", "from-env:x")
        assert state_for(app).keys.prefix == "from-env:x"
    finally:
        app.conf.graph_key_prefix = old
