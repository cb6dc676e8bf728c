"""``python -m scripts.scenario ...``: the same as ``medchain scenario ...``."""

import sys

from scripts.scenario import main

if __name__ == "__main__":
    sys.exit(main())
