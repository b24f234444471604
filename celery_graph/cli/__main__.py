"""``python -m celery_graph.cli``: the same as the ``celery-graph`` console script."""

import sys

from .groups import main

sys.exit(main())
