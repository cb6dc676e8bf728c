"""Log formats of a node process: human text, or one JSON object per line (``--log-format``).

A JSON line carries ``ts`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``node``,
``msg``, ``view`` and ``seq``, plus ``exc`` when an exception is logged. ``view`` and ``seq`` are
those the line is about when its call passes them (``extra={"view": v, "seq": s}``), else the
replica's current view and last executed seq at the moment of the line (null before the
replica is restored). The node's task runs on one thread, so that is the state the line was
written in. Messages never contain a payload or a patient identifier (a rule for every log
line of a node, whatever the format).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Final

LOG_FORMATS: Final = ("text", "json")

Position = Callable[[], tuple[int | None, int | None]]
"""(view, seq) of the node right now."""


def _no_position() -> tuple[int | None, int | None]:
    return None, None


class JsonFormatter(logging.Formatter):
    """One JSON object per record; see the module docstring for the fields."""

    def __init__(self, node_id: int) -> None:
        super().__init__()
        self.node_id = node_id
        self.position: Position = _no_position

    def format(self, record: logging.LogRecord) -> str:
        view = getattr(record, "view", None)
        seq = getattr(record, "seq", None)
        if view is None and seq is None:
            view, seq = self.position()
        t = time.gmtime(record.created)
        doc: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "node": self.node_id,
            "view": view,
            "seq": seq,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, separators=(",", ":"), default=str)


_formatter: JsonFormatter | None = None


def setup_logging(node_id: int, level: str, log_format: str = "text") -> None:
    """Log to stderr with the node id on every line (ours and aiohttp's)."""
    global _formatter
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        _formatter = JsonFormatter(node_id)
        handler.setFormatter(_formatter)
    else:
        _formatter = None
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s.%(msecs)03d node{node_id} %(levelname)s %(name)s: %(message)s",
                datefmt="%Y-%m-%d %H:%M:%S",
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # One access log line per request would drown everything else at benchmark rates.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def set_position(position: Position) -> None:
    """Where JSON lines take view and seq from (the running node's replica)."""
    if _formatter is not None:
        _formatter.position = position
