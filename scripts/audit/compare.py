"""Comparing the gathered chains: height by height against the majority of their holders.

No I/O: these functions read the views gathering filled and set each one's verdict. A node
that is only shorter than the others (the same blocks, fewer of them) is ``lagging``, never a
divergence.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scripts.audit.view import UNREACHABLE, NodeView

DIVERGED = "diverged"
INVALID = "invalid"
LAGGING = "lagging"
AGREE = "agree"


@dataclass(frozen=True, slots=True)
class Divergence:
    height: int
    by_hash: dict[str, list[str]]
    """Block hash (hex) -> names of the nodes holding it."""

    def to_json(self) -> dict[str, Any]:
        return {"height": self.height, "blocks": self.by_hash}


def compare(views: Sequence[NodeView], start: int, lag_tolerance: int) -> list[Divergence]:
    """Set each view's status, agreement and lag; return the heights where nodes differ."""
    audited = [v for v in views if v.source != UNREACHABLE]
    divergences, diverged_at = divergences_from(audited, start)
    max_height = max((v.height for v in audited if v.height is not None), default=0)
    for v in views:
        _classify(v, max_height, diverged_at.get(v.name), lag_tolerance)
    return divergences


def divergences_from(
    audited: Sequence[NodeView], start: int
) -> tuple[list[Divergence], dict[str, int]]:
    """Every height from ``start`` where the holders disagree, and the first height at which
    each node holds a block other than the majority's (without a strict majority, every
    holder diverges there)."""
    divergences: list[Divergence] = []
    diverged_at: dict[str, int] = {}
    top = max((h for v in audited for h in v.hashes), default=start - 1)
    for height in range(start, top + 1):
        holders = [(v, v.hashes[height]) for v in audited if height in v.hashes]
        counts = Counter(bhash for _, bhash in holders)
        if len(counts) <= 1:
            continue
        ranked = counts.most_common()
        majority = ranked[0][0] if ranked[0][1] > ranked[1][1] else None
        by_hash: dict[str, list[str]] = {}
        for v, bhash in holders:
            by_hash.setdefault(bhash.hex(), []).append(v.name)
            if bhash != majority:
                diverged_at.setdefault(v.name, height)
        divergences.append(Divergence(height, by_hash))
    return divergences, diverged_at


def _classify(v: NodeView, max_height: int, first_div: int | None, lag_tolerance: int) -> None:
    if v.source == UNREACHABLE or v.height is None:
        v.status = UNREACHABLE
        return
    v.lag = max_height - v.height
    through = v.verified_through or 0
    v.agrees_through = min(through, first_div - 1) if first_div is not None else through
    if first_div is not None:
        v.status = DIVERGED
    elif v.bad_height is not None:
        v.status = INVALID
    elif v.lag > lag_tolerance:
        v.status = LAGGING
    else:
        v.status = AGREE


def verdict(views: Sequence[NodeView], divergences: Sequence[Divergence]) -> tuple[bool, int]:
    """Whether the audit passes (some node audited, none diverged or invalid, no divergent
    height), and the height through which every audited node's chain verifies."""
    audited = [v for v in views if v.status != UNREACHABLE]
    failed = [v for v in views if v.status in (DIVERGED, INVALID)]
    ok = bool(audited) and not failed and not divergences
    common = min((v.verified_through or 0 for v in audited), default=0)
    return ok, common
