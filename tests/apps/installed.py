"""An app whose module declares no graph task once the app exists (the graph tasks were
imported first): `celery_graph.install(app)` gives its `celery worker` the options and
the bootstep."""

import celery_graph
from tests.apps import ops_tasks  # noqa: F401  graph tasks declared before the app exists
from tests.apps.common import app_from_env

app = app_from_env()
celery_graph.install(app)
