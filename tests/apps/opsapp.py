"""`graph-worker -A tests.apps.opsapp`: the ops test app, configured from CGOPS_* env."""

from tests.apps import ops_tasks  # noqa: F401  registers the graph tasks
from tests.apps.common import app_from_env

app = app_from_env()
