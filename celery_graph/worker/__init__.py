"""The worker process: ``command`` (``graph-worker``), ``attach`` (how an app's workers get
celery-graph: options, bootstep, task signals; ``celery_graph.install``), ``step`` (the
bootstep), ``heartbeat`` (the registry of live workers), ``metrics`` (what is counted) and
``endpoint`` (``/metrics`` and ``/healthz``)."""
