"""`celery -A tests.apps.opsapp worker` (and `graph-worker -A ...`): the ops test app,
configured from CGOPS_* env. Its graph tasks are declared once the app exists, so a plain
`celery worker` of it gets celery-graph's options and bootstep with no install() call."""

from tests.apps.common import app_from_env

app = app_from_env()

from tests.apps import ops_tasks  # noqa: E402, F401  registers the graph tasks, after the app
