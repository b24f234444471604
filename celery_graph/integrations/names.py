"""The names celery-graph gives a node's run, node and flow: OpenTelemetry span
attributes and Sentry tags alike."""

RUN_ID = "celery_graph.run_id"  # the run's id (32 hex digits)
NODE = "celery_graph.node"  # the node's id (a map item's node)
FLOW = "celery_graph.flow"  # the run's flow name, when it has one
