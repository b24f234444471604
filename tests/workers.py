"""Old import path, kept for tests written against it: ``Workers`` is in
tests/support/processes.py."""

from tests.support import ROOT
from tests.support.processes import SESSION, Workers

__all__ = ["ROOT", "SESSION", "Workers"]
