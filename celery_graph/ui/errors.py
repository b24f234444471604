"""The client errors a view raises to answer a request: each names its HTTP status, and
the web layer (``server.py``) maps these, and celery-graph's own errors, to statuses.
Anything else a view raises, a builtin ``KeyError`` or ``ValueError`` included, is a bug
of the server: a 500, logged."""

from __future__ import annotations


class HttpError(Exception):
    """An answer other than 200, with a message saying why."""

    status = 400


class BadRequest(HttpError):
    """The request is malformed: a parameter, the body (HTTP 400)."""

    status = 400


class NotFound(HttpError):
    """The request names something that does not exist: a node, a flow (HTTP 404)."""

    status = 404


class ActionRefused(HttpError):
    """An action that does not apply to the run as it is (HTTP 409); says why."""

    status = 409
