"""The node's clock: milliseconds that never go backwards, anchored to the wall clock."""

from __future__ import annotations

import time


class NodeClock:
    """Milliseconds that never go backwards, anchored to the wall clock at start.

    The replica needs a monotonic time for its timers; it also stamps proposed batches with it,
    so anchoring to the wall clock keeps block timestamps meaningful to people.
    """

    __slots__ = ("_mono0", "_wall0")

    def __init__(self) -> None:
        self._wall0 = time.time_ns() // 1_000_000
        self._mono0 = time.monotonic_ns()

    def __call__(self) -> int:
        return self._wall0 + (time.monotonic_ns() - self._mono0) // 1_000_000
