"""The worker process: ``command`` (``graph-worker``), ``step`` (what every ``celery
worker`` of an app using celery-graph gets: options and bootstep), ``heartbeat`` (the
registry of live workers) and ``metrics`` (Prometheus, ``/healthz``)."""
