"""Imported first by a test's worker subprocess (tests/skew on PYTHONPATH): its clock is
CGTEST_CLOCK_SKEW seconds off, like a host whose clock drifted."""

import os
import time

_skew = float(os.environ.get("CGTEST_CLOCK_SKEW", "0"))
_real_time = time.time


def _skewed() -> float:
    return _real_time() + _skew


time.time = _skewed
