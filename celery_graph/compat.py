"""What differs between the Celery releases celery-graph supports (5.3 and newer), in one
place: the installed version, and the options and settings that need a later release.

Celery takes an option or setting it does not know without a word (a task option becomes
a class attribute, a setting a key nobody reads), so an older Celery would quietly do
without what the user asked for. celery-graph says so where it is used instead: a task
option at the ``@task`` declaration (:func:`check_task_options` raises), a setting when a
worker starts (:func:`ignored_settings`, one warning line each). docs/compatibility.md
lists the same facts for readers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib.metadata import version
from typing import Any

from .errors import ConfigurationError


def version_tuple(text: str) -> tuple[int, ...]:
    """``"5.3.0"`` -> ``(5, 3, 0)``; ``"7.2.4-v2"`` -> ``(7, 2, 4)``, ``"5.5.0rc1"`` ->
    ``(5, 5, 0)`` (the leading digits of each part)."""
    return tuple(int(m[0]) if (m := re.match(r"\d+", part)) else 0 for part in text.split("."))


CELERY_VERSION: tuple[int, ...] = version_tuple(version("celery"))
OLDEST_CELERY = (5, 3)

# Task options Celery added after 5.3: option -> the first release that has it.
TASK_OPTIONS_SINCE: dict[str, tuple[int, int]] = {
    "pydantic": (5, 5),
    "pydantic_strict": (5, 5),
    "pydantic_context": (5, 5),
    "pydantic_dump_kwargs": (5, 5),
}

# Since Celery 5.5 a cold shutdown cancels the running late-ack tasks, whose messages go back
# to the queue when the connection closes; before, it stopped the pool, and a task without
# reject_on_worker_lost (an existing task run as a node) failed with WorkerLostError. The
# worker bootstep does the cancelling itself on older releases.
COLD_SHUTDOWN_CANCELS = (5, 5)

# Celery settings added after 5.3 that change what a worker does with graph nodes:
# setting -> (first release that has it, what happens without it).
SETTINGS_SINCE: dict[str, tuple[tuple[int, int], str]] = {
    "worker_soft_shutdown_timeout": (
        (5, 5),
        "a cold shutdown (after --graceful-timeout) hands running nodes back at once",
    ),
    "worker_enable_soft_shutdown_on_idle": (
        (5, 5),
        "a cold shutdown (after --graceful-timeout) hands running nodes back at once",
    ),
    "task_retry_on_worker_lost": (
        (5, 7),
        "graph tasks still reject and requeue a message whose pool process died "
        "(task_reject_on_worker_lost)",
    ),
}


def _text(release: tuple[int, ...]) -> str:
    return ".".join(map(str, release))


def installed() -> str:
    """The installed Celery release, as ``"5.3.0"``."""
    return _text(CELERY_VERSION)


def has(release: tuple[int, ...]) -> bool:
    """True when the installed Celery is ``release`` or newer."""
    return tuple(release) <= CELERY_VERSION


def check_task_options(where: str, options: Mapping[str, Any]) -> None:
    """Raise ConfigurationError, naming ``where``, the option and the release it needs, for
    a task option set in ``options`` that the installed Celery does not have."""
    for name, since in TASK_OPTIONS_SINCE.items():
        if options.get(name) not in (None, False) and not has(since):
            raise ConfigurationError(
                f"{where}: {name}={options[name]!r} needs Celery {_text(since)} or newer "
                f"(Celery {installed()} is installed, which would ignore it); upgrade "
                f"Celery or drop the option"
            )


def ignored_settings(conf: Mapping[str, Any]) -> list[str]:
    """One line for each setting in ``conf`` that the installed Celery does not have
    (and so ignores), saying what happens instead."""
    lines = []
    for name, (since, instead) in SETTINGS_SINCE.items():
        if conf.get(name) not in (None, False, 0) and not has(since):
            lines.append(
                f"{name} needs Celery {_text(since)} or newer (Celery {installed()} is "
                f"installed): ignored; {instead}"
            )
    return lines
