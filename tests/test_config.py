"""The settings table drives reading (app.conf, then the environment, then the default),
validation (one error naming where a bad value came from and the value) and the cache of
``Settings.from_app``, which never serves settings older than the app's configuration."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import pytest
from celery import Celery

from celery_graph import config
from celery_graph.config import (
    SETTINGS,
    WORKER_SETTINGS,
    Settings,
    WorkerOptions,
    heartbeat_interval,
    reliable_defaults_wanted,
    setting,
)
from celery_graph.errors import ConfigurationError, NoGraphRedis

# per kind of value: one from app.conf, one from the environment, and what each reads as
GOOD: dict[config.Kind, tuple[Any, str, Any, Any]] = {
    config.PREFIX: ("app:wf", "env:wf", "app:wf", "env:wf"),
    config.POSITIVE_INT: (7, "8", 7, 8),
    config.COUNT: (0, "9", 0, 9),
    config.POSITIVE_SECONDS: (1.5, "2.5", 1.5, 2.5),
    config.SECONDS: (0, "0.5", 0.0, 0.5),
    config.REDIS_URL: (
        "redis://127.0.0.1:1/0",
        "redis+cluster://127.0.0.1:2,127.0.0.1:3",
        "redis://127.0.0.1:1/0",
        "redis+cluster://127.0.0.1:2,127.0.0.1:3",
    ),
    config.JSON_OBJECT: ({"b": 1, "a": [2]}, '{"x": true}', '{"a": [2], "b": 1}', '{"x": true}'),
    config.FLAG: (False, "off", False, False),
}

# per kind: malformed values, the same from app.conf and (as text) from the environment
BAD: dict[config.Kind, list[Any]] = {
    config.PREFIX: ["bad {prefix}", "a::b", ":a"],
    config.POSITIVE_INT: [0, -3, "abc", 1.5, "1e3x", True],
    config.COUNT: [-1, "many", 2.5],
    config.POSITIVE_SECONDS: [0, -0.5, "soon", "inf", "nan"],
    config.SECONDS: [-1, "later", "inf"],
    config.REDIS_URL: ["http://example.invalid", "localhost:6379"],
    config.JSON_OBJECT: ["[1, 2]", "{not json", "3"],
    config.FLAG: [],  # any text reads as on or off
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for s in (*SETTINGS, *WORKER_SETTINGS):
        monkeypatch.delenv(s.env, raising=False)
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)
    return monkeypatch


def new_app(**conf: Any) -> Celery:
    app = Celery("cgconfig", broker="redis://127.0.0.1:9/0", set_as_current=False)
    app.conf.update(conf)
    return app


def test_the_table_names_every_field_of_settings_once() -> None:
    assert [s.field for s in SETTINGS] == [f.name for f in dataclasses.fields(Settings)]
    envs = [s.env for s in (*SETTINGS, *WORKER_SETTINGS)]
    assert len(set(envs)) == len(envs)
    assert all(s.name.startswith("graph_") for s in SETTINGS)
    assert config.ENV_HEARTBEAT_INTERVAL == "CELERY_GRAPH_HEARTBEAT_INTERVAL"


@pytest.mark.parametrize("row", SETTINGS, ids=lambda s: s.name)
def test_a_setting_comes_from_the_app_then_the_environment_then_the_default(
    row: config.Setting, clean_env: pytest.MonkeyPatch
) -> None:
    conf_value, env_text, from_conf, from_env = GOOD[row.kind]
    default = new_app().conf.broker_url if row.name == "graph_redis_url" else row.default
    assert getattr(Settings.from_app(new_app()), row.field) == default
    clean_env.setenv(row.env, env_text)
    assert getattr(Settings.from_app(new_app()), row.field) == from_env
    assert getattr(Settings.from_app(new_app(**{row.name: conf_value})), row.field) == from_conf
    clean_env.setenv(row.env, "")  # an empty variable counts as unset
    assert getattr(Settings.from_app(new_app()), row.field) == default


@pytest.mark.parametrize(
    ("row", "bad"),
    [(s, bad) for s in SETTINGS for bad in BAD[s.kind]],
    ids=lambda v: v.name if isinstance(v, config.Setting) else repr(v),
)
def test_a_malformed_setting_is_one_error_naming_it_and_the_value(
    row: config.Setting, bad: Any, clean_env: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_app(new_app(**{row.name: bad}))
    assert f"app.conf.{row.name}" in str(raised.value)
    assert repr(bad) in str(raised.value)
    if isinstance(bad, bool):
        return  # the environment holds text only
    clean_env.setenv(row.env, str(bad))
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_app(new_app())
    assert row.env in str(raised.value) and row.name in str(raised.value)
    assert repr(str(bad)) in str(raised.value)


def test_the_errors_say_what_the_setting_accepts(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_app(new_app(graph_result_ttl=-5))
    assert str(raised.value) == (
        "app.conf.graph_result_ttl = -5 is not valid: expected a positive integer"
    )
    clean_env.setenv("CELERY_GRAPH_QUEUED_LEASE", "soon")
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_app(new_app())
    assert str(raised.value) == (
        "environment variable CELERY_GRAPH_QUEUED_LEASE (graph_queued_lease) = 'soon' is not "
        "valid: expected a positive number of seconds"
    )
    with pytest.raises(ConfigurationError, match=r"graph_key_prefix: malformed key prefix 'a b'"):
        Settings.from_app(new_app(graph_key_prefix="a b"))


def test_the_graph_redis_defaults_to_the_brokers_then_the_result_backends(
    clean_env: pytest.MonkeyPatch,
) -> None:
    amqp = "amqp://guest:guest@127.0.0.1:5672//"
    app = Celery("cgconfig", broker=amqp, backend="redis://127.0.0.1:9/3", set_as_current=False)
    assert Settings.from_app(app).redis_url == "redis://127.0.0.1:9/3"
    with pytest.raises(NoGraphRedis, match="found no Redis URL"):
        Settings.from_app(Celery("cgconfig", broker=amqp, set_as_current=False))
    sentinel = Celery("cgconfig", broker="sentinel://127.0.0.1:26379", set_as_current=False)
    sentinel.conf.broker_transport_options = {"master_name": "graphs"}
    assert Settings.from_app(sentinel).transport_options == {"master_name": "graphs"}


def test_worker_settings_come_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    assert WorkerOptions.from_env() == WorkerOptions(None, None, None, 60.0, "127.0.0.1")
    assert (heartbeat_interval(), reliable_defaults_wanted()) == (5.0, False)
    clean_env.setenv("CELERY_GRAPH_HEARTBEAT_INTERVAL", "0.5")
    clean_env.setenv("CELERY_GRAPH_RELIABLE_DEFAULTS", "1")
    clean_env.setenv("CELERY_GRAPH_GRACEFUL_TIMEOUT", "0")
    assert (heartbeat_interval(), reliable_defaults_wanted()) == (0.5, True)
    assert WorkerOptions.from_env().graceful_timeout == 0.0
    for off in ("0", "false", "no", "off", "NO"):
        clean_env.setenv("CELERY_GRAPH_RELIABLE_DEFAULTS", off)
        assert not reliable_defaults_wanted()


@pytest.mark.parametrize(
    ("env", "value", "read"),
    [
        ("CELERY_GRAPH_HEARTBEAT_INTERVAL", "soon", heartbeat_interval),
        ("CELERY_GRAPH_HEARTBEAT_INTERVAL", "-1", heartbeat_interval),
        ("CELERY_GRAPH_METRICS_PORT", "http", WorkerOptions.from_env),
        ("CELERY_GRAPH_METRICS_PORT", "70000", WorkerOptions.from_env),
        ("CELERY_GRAPH_GRACEFUL_TIMEOUT", "-5", WorkerOptions.from_env),
    ],
)
def test_a_malformed_worker_setting_is_a_configuration_error_naming_the_variable(
    env: str, value: str, read: Any, clean_env: pytest.MonkeyPatch
) -> None:
    """heartbeat_interval() used to let float()'s bare ValueError out."""
    clean_env.setenv(env, value)
    with pytest.raises(ConfigurationError) as raised:
        read()
    assert f"environment variable {env} = {value!r} is not valid" in str(raised.value)


# -- the cache ---------------------------------------------------------------------------


def test_unchanged_settings_are_read_once_per_app(clean_env: pytest.MonkeyPatch) -> None:
    app = new_app(graph_key_prefix="cached:a")
    first = Settings.from_app(app)
    assert Settings.from_app(app) is first  # a second read would build a new object
    assert Settings.from_app(app) == Settings.read(app)
    other = new_app(graph_key_prefix="cached:b")
    assert Settings.from_app(other).key_prefix == "cached:b"
    assert Settings.from_app(app) is first


def test_a_changed_setting_is_seen_at_the_next_read(clean_env: pytest.MonkeyPatch) -> None:
    app = new_app()
    assert Settings.from_app(app).queued_lease == 30.0
    app.conf.graph_queued_lease = 1
    assert Settings.from_app(app).queued_lease == 1.0
    app.conf.update(graph_queued_lease=2, graph_running_lease=3)
    assert (Settings.from_app(app).queued_lease, Settings.from_app(app).running_lease) == (2, 3)
    app.conf.graph_queued_lease = None  # as the tests reset a setting
    assert Settings.from_app(app).queued_lease == 30.0
    clean_env.setenv("CELERY_GRAPH_QUEUED_LEASE", "4")
    assert Settings.from_app(app).queued_lease == 4.0
    clean_env.delenv("CELERY_GRAPH_QUEUED_LEASE")
    assert Settings.from_app(app).queued_lease == 30.0
    app.conf.broker_url = "redis://127.0.0.1:9/5"  # the graph Redis follows the broker
    assert Settings.from_app(app).redis_url == "redis://127.0.0.1:9/5"
    clean_env.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:9/6")  # Celery's own override
    assert Settings.from_app(app).redis_url == "redis://127.0.0.1:9/6"


def test_the_environment_is_read_without_os_environ_get(clean_env: pytest.MonkeyPatch) -> None:
    """The cache's look at the environment reads os.environ's raw dict (os.environ.get
    raised and caught a KeyError per unset variable: most of a lookup's time); an
    os.environ without that dict is read through get(), with the same answers."""
    app = new_app()
    clean_env.setenv("CELERY_GRAPH_QUEUED_LEASE", "5")
    assert Settings.from_app(app).queued_lease == 5.0
    plain = dict(os.environ, CELERY_GRAPH_QUEUED_LEASE="6")
    clean_env.setattr(config.os, "environ", plain)
    assert config._environment() == tuple(map(plain.get, config._ENV_NAMES))
    assert Settings.from_app(app).queued_lease == 6.0


def test_pinned_settings_are_read_once_and_seen_changed_after_the_block(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """A node delivery pins its app's settings (executor/task.py): every lookup inside
    answers the settings read on entry; a change made meanwhile is seen after the block,
    and other apps and other threads read as before."""
    import threading

    app, other = new_app(), new_app(graph_key_prefix="pinned:other")
    with config.pinned(app) as held:
        assert held is Settings.from_app(app)
        app.conf.graph_queued_lease = 7
        assert Settings.from_app(app).queued_lease == 30.0  # pinned
        assert Settings.from_app(other).key_prefix == "pinned:other"
        seen: list[float] = []
        thread = threading.Thread(target=lambda: seen.append(Settings.from_app(app).queued_lease))
        thread.start()
        thread.join()
        assert seen == [7.0]  # another thread is not pinned
        with config.pinned(other):
            assert Settings.from_app(app).queued_lease == 7.0
        assert Settings.from_app(app) is held  # the outer pin again
    assert Settings.from_app(app).queued_lease == 7.0


def test_a_dict_changed_in_place_is_seen(clean_env: pytest.MonkeyPatch) -> None:
    options: dict[str, Any] = {"socket_keepalive": True}
    app = new_app(graph_redis_transport_options=options)
    assert Settings.from_app(app).transport_options == options
    options["health_check_interval"] = 10
    assert Settings.from_app(app).transport_options == json.loads(json.dumps(options))
    options["sentinel_kwargs"] = {"password": "a"}
    assert Settings.from_app(app).transport_options["sentinel_kwargs"] == {"password": "a"}
    options["sentinel_kwargs"]["password"] = "b"
    assert Settings.from_app(app).transport_options["sentinel_kwargs"] == {"password": "b"}


def test_a_django_style_namespace_is_read_and_followed(clean_env: pytest.MonkeyPatch) -> None:
    class DjangoSettings:
        CELERY_BROKER_URL = "redis://127.0.0.1:9/0"
        CELERY_GRAPH_KEY_PREFIX = "django:wf"

    app = Celery("cgconfig", set_as_current=False)
    app.config_from_object(DjangoSettings, namespace="CELERY")
    assert Settings.from_app(app).key_prefix == "django:wf"
    assert Settings.from_app(app).key_prefix == "django:wf"
    app.conf.CELERY_GRAPH_KEY_PREFIX = "django:other"
    assert Settings.from_app(app).key_prefix == "django:other"


def test_a_malformed_setting_is_never_cached(clean_env: pytest.MonkeyPatch) -> None:
    app = new_app(graph_max_lost=2)
    assert Settings.from_app(app).max_lost == 2
    app.conf.graph_max_lost = 0
    for _ in range(2):
        with pytest.raises(ConfigurationError, match="graph_max_lost = 0"):
            Settings.from_app(app)
    app.conf.graph_max_lost = 2
    assert Settings.from_app(app).max_lost == 2


def test_the_cache_keeps_no_app_alive(clean_env: pytest.MonkeyPatch) -> None:
    import gc
    import weakref

    app = new_app()
    Settings.from_app(app)
    Settings.from_app(app)
    assert app in config._cache
    gone = weakref.ref(app)
    del app
    gc.collect()
    assert gone() is None


def test_setting_names_a_row() -> None:
    assert setting("graph_result_ttl").env == "CELERY_GRAPH_RESULT_TTL"
    assert setting("metrics_port").flag == "--metrics-port"
