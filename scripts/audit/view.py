"""What the audit learns of one node: where it was read from, its chain, and its verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LIVE = "live"
OFFLINE = "offline"
UNREACHABLE = "unreachable"


@dataclass(slots=True)
class NodeView:
    """Filled by gathering (source, chain, self-report), then by comparing (status, agreement,
    lag)."""

    name: str
    url: str | None
    source: str = UNREACHABLE
    height: int | None = None
    head_hash: str | None = None
    stable_seq: int | None = None
    hashes: dict[int, bytes] = field(default_factory=dict)
    """Verified block hashes by height, over the audited range."""
    bad_height: int | None = None
    bad_reason: str | None = None
    evidence: int | None = None
    quarantined: int | None = None
    repaired: int | None = None
    self_report: str | None = None
    """The node's own auditor's overall agreement (live nodes)."""
    error: str | None = None
    status: str = UNREACHABLE
    agrees_through: int | None = None
    lag: int | None = None

    def fail(self, height: int, reason: str) -> None:
        if self.bad_height is None:
            self.bad_height, self.bad_reason = height, reason

    @property
    def verified_through(self) -> int | None:
        if self.height is None:
            return None
        return self.height if self.bad_height is None else self.bad_height - 1

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "source": self.source,
            "status": self.status,
            "height": self.height,
            "head_hash": self.head_hash,
            "stable_seq": self.stable_seq,
            "agrees_through": self.agrees_through,
            "lag": self.lag,
            "certificates_ok": None if self.height is None else self.bad_height is None,
            "first_bad_height": self.bad_height,
            "bad_reason": self.bad_reason,
            "evidence": self.evidence,
            "quarantined": self.quarantined,
            "repaired": self.repaired,
            "self_report": self.self_report,
            "error": self.error,
        }
