"""``python -m scripts.audit ...``: the same as ``medchain audit ...``."""

import sys

from scripts.audit.cli import main

if __name__ == "__main__":
    sys.exit(main())
