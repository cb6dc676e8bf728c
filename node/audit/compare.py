"""How one peer's chain compares with ours: outcomes, verdicts and per-peer state (pure).

Per peer the report says: ``agree`` (same blocks; heights within ``lag_tolerance``),
``lagging`` (heights differ by more, same blocks up to the common height: an honest node
catching up), ``diverged`` (a block with a valid certificate that differs from ours at the
same height), ``invalid`` (the peer served something that does not verify) or
``unreachable``. Divergent and invalid heights stay open, and are re-checked every round with
whole blocks, until the peer serves the right block there.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from node.repair import now_ms, short

AGREE: Final = "agree"
LAGGING: Final = "lagging"
DIVERGED: Final = "diverged"
INVALID: Final = "invalid"
UNREACHABLE: Final = "unreachable"
UNKNOWN: Final = "unknown"
SEVERITY: Final = {UNKNOWN: 0, AGREE: 1, LAGGING: 2, UNREACHABLE: 3, INVALID: 4, DIVERGED: 5}
_MAX_OPEN_ISSUES: Final = 64
_MAX_TIP_DONE: Final = 4096


@dataclass(frozen=True, slots=True)
class HeightCheck:
    """One common height compared with one peer."""

    height: int
    ours: bytes | None
    """Our verified block hash (None: ours is quarantined, nothing to compare with)."""
    theirs: bytes | None
    """The peer's block hash as served (None: it served nothing parseable)."""
    problem: str | None = None
    """Why the peer's block does not verify (None if it does)."""

    @property
    def outcome(self) -> str:
        if self.problem is not None:
            return INVALID
        if self.ours is None or self.theirs is None:
            return UNKNOWN
        return AGREE if self.ours == self.theirs else DIVERGED


@dataclass(frozen=True, slots=True)
class Verdict:
    agreement: str
    lag: int
    """peer height - our height: positive when the peer is ahead (we are the one lagging)."""
    open_issues: Mapping[int, str]
    """Heights still divergent or invalid, with the outcome."""


def apply_checks(open_issues: Mapping[int, str], checks: Iterable[HeightCheck]) -> dict[int, str]:
    """Open issues after this round: a height becomes open when its check fails and closes
    when a later check of the same height agrees. Bounded (the lowest heights are kept: the
    first divergence is the one that matters)."""
    issues = dict(open_issues)
    for c in checks:
        outcome = c.outcome
        if outcome in (INVALID, DIVERGED):
            issues[c.height] = outcome
        elif outcome == AGREE:
            issues.pop(c.height, None)
    if len(issues) > _MAX_OPEN_ISSUES:
        issues = dict(sorted(issues.items())[:_MAX_OPEN_ISSUES])
    return issues


def classify(
    our_height: int, peer_height: int, open_issues: Mapping[int, str], *, lag_tolerance: int
) -> Verdict:
    """The agreement with a peer: diverged > invalid > lagging > agree.

    Different heights alone never make a divergence: a peer that is behind (or ahead) with the
    same blocks up to the common height is ``lagging``.
    """
    lag = peer_height - our_height
    outcomes = set(open_issues.values())
    if DIVERGED in outcomes:
        agreement = DIVERGED
    elif INVALID in outcomes:
        agreement = INVALID
    elif abs(lag) > lag_tolerance:
        agreement = LAGGING
    else:
        agreement = AGREE
    return Verdict(agreement=agreement, lag=lag, open_issues=dict(open_issues))


def plan_heights(
    cursor: int, done: Iterable[int], common: int, *, recent: int, sweep: int
) -> list[int]:
    """Heights to compare this round: the tip window (last ``recent`` common heights) and the
    next ``sweep`` heights from ``cursor``, minus those already compared (``done``)."""
    if common < 1:
        return []
    already = set(done)
    start = max(1, cursor)
    picked = {h for h in range(max(start, common - recent + 1), common + 1) if h not in already}
    # The sweep skips heights already compared, so one height that cannot be compared yet
    # (ours is being repaired, the peer's is missing) never stalls it.
    height = start
    swept = 0
    while height <= common and swept < sweep:
        if height not in already and height not in picked:
            picked.add(height)
            swept += 1
        height += 1
    return sorted(picked)


def contiguous_ranges(heights: Sequence[int], *, max_len: int = 1 << 62) -> list[tuple[int, int]]:
    """Sorted heights as (first, last) runs of at most ``max_len`` heights each."""
    out: list[tuple[int, int]] = []
    for height in heights:
        if out and height == out[-1][1] + 1 and height - out[-1][0] < max_len:
            out[-1] = (out[-1][0], height)
        else:
            out.append((height, height))
    return out


# ---------------------------------------------------------------------------------------------
# per-peer state


@dataclass(slots=True)
class PeerCounters:
    rounds: int = 0
    unreachable: int = 0
    blocks_compared: int = 0
    """Common heights compared for the first time (each height once)."""
    history_samples: int = 0
    """Already compared heights compared again (the random history window)."""
    headers_verified: int = 0
    blocks_verified: int = 0
    """Whole blocks fetched and verified (body sample, closer looks, open issues)."""
    invalid_blocks: int = 0
    divergent_blocks: int = 0
    evidence_recorded: int = 0

    def to_json(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class PeerState:
    peer_id: int
    url: str
    max_problems: int
    agreement: str = UNKNOWN
    height: int | None = None
    head_hash: bytes | None = None
    stable_seq: int | None = None
    view: int | None = None
    lag: int | None = None
    cursor: int = 1
    """Every common height below this one has been compared."""
    tip_done: set[int] = field(default_factory=set)
    """Heights >= cursor already compared (by the tip window)."""
    last_compared: int = 0
    open_issues: dict[int, str] = field(default_factory=dict)
    problems: deque[dict[str, Any]] = field(default_factory=deque)
    counters: PeerCounters = field(default_factory=PeerCounters)
    last_error: str | None = None
    last_audit_ms: int | None = None

    def problem(self, kind: str, height: int | None, detail: str) -> None:
        self.problems.append(
            {"at_ms": now_ms(), "kind": kind, "height": height, "detail": short(detail)}
        )
        while len(self.problems) > self.max_problems:
            self.problems.popleft()

    def mark_done(self, heights: Iterable[int]) -> None:
        self.tip_done.update(heights)
        while self.cursor in self.tip_done:
            self.tip_done.discard(self.cursor)
            self.cursor += 1
        if len(self.tip_done) > _MAX_TIP_DONE:
            # Forget the highest: they are simply compared again later.
            self.tip_done = set(sorted(self.tip_done)[:_MAX_TIP_DONE])

    def restart_sweep(self) -> None:
        self.cursor = 1
        self.tip_done.clear()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.peer_id,
            "url": self.url,
            "agreement": self.agreement,
            "height": self.height,
            "head_hash": None if self.head_hash is None else self.head_hash.hex(),
            "stable_seq": self.stable_seq,
            "view": self.view,
            "lag": self.lag,
            "audited_through": self.cursor - 1,
            "last_compared_height": self.last_compared,
            "open_issues": [
                {"height": hh, "outcome": o} for hh, o in sorted(self.open_issues.items())
            ],
            "problems": list(self.problems),
            "counters": self.counters.to_json(),
            "last_error": self.last_error,
            "last_audit_ms": self.last_audit_ms,
        }
