"""Entry point: ``python server.py [--config PATH] [--demo]`` (what ``./run.sh`` runs).

The start-up itself lives in ``pgw.server``.
"""

import sys

from pgw.server import main

if __name__ == "__main__":
    sys.exit(main())
