"""Flows shipped with the package, so the commands' help examples run as written:

    graph-worker -A celery_graph.examples.etl                  # a worker for it
    celery-graph run celery_graph.examples.etl:flow --wait     # a run of it

Each module makes its own Celery app (broker and graph state on
``$CELERY_GRAPH_REDIS_URL``, default ``redis://localhost:6379/0``). The repository's
``examples/`` directory has more, with explanations.
"""
