"""Importable Celery app modules for `graph-worker -A tests.apps.<name>` subprocesses."""
