"""examples/quickstart.py runs as written: a real worker subprocess, a real run."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.slow  # the quickstart script starts its own worker


def test_quickstart_example_runs_end_to_end(redis_url, rclient):
    env = dict(os.environ, CELERY_GRAPH_REDIS_URL=redis_url)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "[##############################] 4/4 nodes done" in out, out
    assert '{"count": 3, "rows": [10, 20, 30]}' in out.splitlines(), out
    for node in ("extract", "transform", "audit", "load"):
        assert re.search(rf"^\s+{node}\s+succeeded\s+on quickstart@", out, re.M), out
    run_id = out.split()[1]
    assert rclient.hget(f"quickstart:run:{{{run_id}}}", "status") == b"succeeded"
