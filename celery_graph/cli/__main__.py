"""``python -m celery_graph.cli``: the same as the ``celery-graph`` console script."""

import sys

from .commands import main

sys.exit(main())
