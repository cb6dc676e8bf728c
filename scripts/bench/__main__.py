"""``python -m scripts.bench ...``: the same as ``medchain bench ...``."""

import sys

from scripts.bench import main

if __name__ == "__main__":
    sys.exit(main())
