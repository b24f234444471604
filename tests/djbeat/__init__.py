"""A Django project as django-celery-beat users have one: settings with the
``django_celery_beat`` app, and a Celery app that runs ``celery beat -S django``."""
