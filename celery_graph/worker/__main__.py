"""``python -m celery_graph.worker``: the same as the ``graph-worker`` console script."""

import sys

from .command import main

sys.exit(main())
