"""Bounds and periods of the cross-audit."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """Bounds and periods of the cross-audit (every field positive). The read path's own
    (scrub, repair, caches, start-up check) are ``node.reader.ReaderSettings``."""

    interval_ms: int = 2000
    """Period of an audit round (every peer)."""
    recent_blocks: int = 64
    """Tip window: the last common heights whose headers are compared with each peer (those
    not compared yet). Wider than the blocks committed in one round under load."""
    sweep_blocks: int = 256
    """Older common headers compared per peer per round, walking up from height 1 (catch-up
    after a start; once the sweep reaches the tip, only new heights are left)."""
    history_sample_blocks: int = 8
    """Already compared heights re-checked (headers) per peer per round: a random window."""
    body_sample_blocks: int = 1
    """Whole blocks (without payloads) fetched per peer per round at random heights to check
    their transactions against the header (tx ids, Merkle root, signatures)."""
    full_blocks_per_round: int = 16
    """Whole blocks fetched per peer per round to look closer where headers disagree and at
    open issues (the lowest heights first)."""
    lag_tolerance: int = 2
    """A peer within this many blocks of us (same blocks) counts as ``agree``, not ``lagging``:
    under load, heights read a moment apart differ by a block or two."""
    http_timeout_ms: int = 3000
    max_response_bytes: int = 32 * 1024 * 1024
    max_problems: int = 32
    """Problems remembered per peer (the newest)."""

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AuditSettings.{name} must be a positive integer, got {value!r}")
