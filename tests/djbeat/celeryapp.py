"""The Celery app of the Django project, for ``celery -A tests.djbeat.celeryapp beat -S
django``: the session's broker, queue and key prefix (CGTEST_REDIS_URL, CGTEST_SESSION),
Django set up first, as a project's ``proj/celery.py`` does."""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.djbeat.settings")
django.setup()

from tests.support.apps import make_app  # noqa: E402

app = make_app(os.environ["CGTEST_REDIS_URL"], None, "cgtest_djbeat")
