"""Old import path, kept for tests written against it: the helpers are in
tests/support/helpers.py."""

from tests.support.helpers import (
    SLOW_ATTRIBUTE,
    Postruns,
    assert_order,
    most_at_once,
    postruns,
    session_name,
    starts_processes,
    wait_for,
)

__all__ = [
    "SLOW_ATTRIBUTE",
    "Postruns",
    "assert_order",
    "most_at_once",
    "postruns",
    "session_name",
    "starts_processes",
    "wait_for",
]
