"""`python -m prune_core ...`: see prune_core.cli."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
