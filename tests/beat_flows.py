"""Flows at module level, named by ``flow_ref`` in the beat tests (``tests.beat_flows:...``):
their bound values are unique to these tests, so no other test shares their graphs."""

from __future__ import annotations

from tests.tasks import add, double

SALT = 7_730_011

by_ref = (add.bind(y=SALT) >> double).with_name("beat-by-ref")
not_a_flow = 42
