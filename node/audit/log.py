"""The audit's evidence records, in the node's audit database (``DATA_DIR/audit.sqlite``).

:class:`AuditLog` is the read path's :class:`node.repair.RepairLog` (quarantined blocks and
events) plus the evidence table: one database, one connection, every table bounded. A node
with the cross-audit off keeps only the read path's tables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from node.audit.evidence import EvidenceRecord, canonical_json
from node.repair import RepairLog

_EVIDENCE_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS evidence (
    id             INTEGER PRIMARY KEY,
    fingerprint    BLOB NOT NULL UNIQUE,
    kind           TEXT NOT NULL,
    height         INTEGER NOT NULL,
    accused        INTEGER,
    observed_at_ms INTEGER NOT NULL,
    summary        TEXT NOT NULL,
    record         TEXT NOT NULL
);
"""


class AuditLog(RepairLog):
    """The audit database (``None`` keeps it in memory): at most ``max_evidence`` records (the
    oldest go first), besides the read path's bounded events and quarantine."""

    _extra_schema = _EVIDENCE_SCHEMA

    def __init__(
        self,
        path: str | Path | None,
        *,
        max_evidence: int = 256,
        max_events: int = 1000,
        max_quarantine: int = 1024,
        read_only: bool = False,
    ) -> None:
        if max_evidence < 1:
            raise ValueError("AuditLog bounds must be positive")
        super().__init__(
            path, max_events=max_events, max_quarantine=max_quarantine, read_only=read_only
        )
        self.max_evidence = max_evidence

    def add_evidence(self, record: EvidenceRecord) -> bool:
        """Store a record; False if the same finding is already stored (deduplicated)."""
        text = canonical_json(record.to_json())
        with self._write():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO evidence"
                "(fingerprint, kind, height, accused, observed_at_ms, summary, record) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.fingerprint(),
                    record.kind,
                    record.height,
                    record.accused,
                    record.observed_at_ms,
                    canonical_json(record.summary()),
                    text,
                ),
            )
            if cur.rowcount == 0:
                return False
            self._trim("evidence", self.max_evidence)
        return True

    def evidence(self, limit: int = 100, *, before_id: int | None = None) -> list[dict[str, Any]]:
        """Newest first, at most ``limit``; each with its row ``seq`` for paging."""
        rows = self._db.execute(
            "SELECT id, record FROM evidence WHERE id < ? ORDER BY id DESC LIMIT ?",
            (before_id if before_id is not None else 1 << 62, max(0, limit)),
        ).fetchall()
        out = []
        for row_id, text in rows:
            doc = json.loads(text)
            doc["seq"] = int(row_id)
            out.append(doc)
        return out

    def evidence_summaries(self, limit: int = 10) -> list[dict[str, Any]]:
        """Newest first, without exhibits (cheap: exhibits can be large)."""
        rows = self._db.execute(
            "SELECT id, summary FROM evidence ORDER BY id DESC LIMIT ?", (max(0, limit),)
        ).fetchall()
        return [{**json.loads(text), "seq": int(row_id)} for row_id, text in rows]

    def evidence_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM evidence").fetchone()[0])

    def evidence_by_kind(self) -> dict[str, int]:
        rows = self._db.execute("SELECT kind, COUNT(*) FROM evidence GROUP BY kind").fetchall()
        return {str(k): int(n) for k, n in rows}
