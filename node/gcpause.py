"""Pauses of the node process that no ``await`` explains: CPython's cyclic garbage collector.

A collection of the oldest generation walks every tracked object the process holds; while it
runs, the node neither answers its peers nor commits. A pause longer than the view timeout
looks, to the backups, exactly like a silent primary. ``GcPauses`` times every collection
through ``gc.callbacks`` so that such a pause is seen (``/metrics``
``medchain_gc_pause_seconds{generation}``, ``/status`` ``gc``) and logged when long, not
guessed at.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Final

from node.observer import FAST_BUCKETS_S, Buckets

log = logging.getLogger("medchain.node")

GENERATIONS: Final = 3
LONG_PAUSE_S: Final = 0.1
"""A pause this long is logged and counted."""


class GcPauses:
    """Times each collection, per generation; ``install`` to start, ``uninstall`` to stop."""

    __slots__ = ("_started_ns", "by_generation", "long_pauses", "max_s", "total_s")

    def __init__(self) -> None:
        self.by_generation = tuple(Buckets(FAST_BUCKETS_S) for _ in range(GENERATIONS))
        self.max_s = 0.0
        self.total_s = 0.0
        self.long_pauses = 0
        self._started_ns: int | None = None

    def install(self) -> None:
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def uninstall(self) -> None:
        while self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started_ns = time.perf_counter_ns()
            return
        started, self._started_ns = self._started_ns, None
        if started is None:
            return  # installed during a collection
        generation = info.get("generation", GENERATIONS - 1)
        pause_s = self.observe(generation, time.perf_counter_ns() - started)
        if pause_s >= LONG_PAUSE_S:
            log.warning(
                "garbage collection of generation %d paused the node %.0f ms (%d collected)",
                generation,
                pause_s * 1000.0,
                info.get("collected", 0),
            )

    def observe(self, generation: int, pause_ns: int) -> float:
        """Count one collection's pause; returns it in seconds."""
        pause_s = pause_ns / 1e9
        self.by_generation[min(max(generation, 0), GENERATIONS - 1)].observe(pause_s)
        self.total_s += pause_s
        self.max_s = max(self.max_s, pause_s)
        if pause_s >= LONG_PAUSE_S:
            self.long_pauses += 1
        return pause_s

    def to_json(self) -> dict[str, object]:
        return {
            "collections": [b.count for b in self.by_generation],
            "pause_total_s": round(self.total_s, 3),
            "pause_max_ms": round(self.max_s * 1000.0, 1),
            "long_pauses": self.long_pauses,
        }
