"""How the ``medchain`` commands talk to their user: rich for people, JSON for scripts.

Human output goes through ``rich``; ``--json`` output is plain JSON on stdout. A
:class:`CliError` is a message for the user, printed as ``medchain: error: ...`` without a
traceback (exit status 1).
"""

from __future__ import annotations

import json
import os
import sys

from rich.console import Console


class CliError(RuntimeError):
    """An error for the user: printed without a traceback, exit status 1."""


def _console(*, to_stderr: bool) -> Console:
    # Redirected output (CI logs, `| less`) gets wide tables instead of rich's 80 columns.
    stream = sys.stderr if to_stderr else sys.stdout
    width = None if stream.isatty() or "COLUMNS" in os.environ else 160
    return Console(stderr=to_stderr, highlight=False, soft_wrap=True, width=width)


stdout = _console(to_stderr=False)
stderr = _console(to_stderr=True)


def print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
    sys.stdout.flush()


def dash(value: object) -> str:
    return "-" if value is None else str(value)


def short_hash(value: object) -> str:
    return "-" if not isinstance(value, str) else value[:16]
