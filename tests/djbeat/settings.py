"""Django settings of the django-celery-beat tests: ``django_celery_beat`` on the database
``databases()`` names (SQLite at CGTEST_DJANGO_SQLITE, or PostgreSQL database
CGTEST_PG_NAME at CGTEST_PG_HOST:CGTEST_PG_PORT as CGTEST_PG_USER)."""

from __future__ import annotations

import os
from typing import Any


def postgres(name: str) -> dict[str, Any]:
    """The DATABASES entry of PostgreSQL database ``name`` on the test server."""
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "HOST": os.environ.get("CGTEST_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("CGTEST_PG_PORT", "5432"),
        "USER": os.environ.get("CGTEST_PG_USER", "postgres"),
    }


def databases() -> dict[str, dict[str, Any]]:
    if os.environ.get("CGTEST_PG_NAME"):
        return {"default": postgres(os.environ["CGTEST_PG_NAME"])}
    path = os.environ.get("CGTEST_DJANGO_SQLITE", ":memory:")
    return {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": path}}


SECRET_KEY = "celery-graph-tests"
INSTALLED_APPS = ["django_celery_beat"]
DATABASES = databases()
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
