"""``--check-evidence``: evidence records checked offline against the consortium's keys.

The records come from a file saved from ``GET /audit/evidence``, one record, or JSON lines.
A valid conflict record also names the replicas that signed both of its conflicting blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from node.audit.evidence import EvidenceError, evidence_from_json
from node.audit.verify_evidence import conflict_signers, load_evidence_file, verify_evidence
from scripts.client import Consortium
from scripts.output import CliError


def load_records(path: Path) -> list[dict[str, Any]]:
    """The evidence records in ``path``; a CliError if it cannot be read or holds none."""
    try:
        docs = load_evidence_file(path)
    except EvidenceError as e:
        raise CliError(e.reason) from None
    if not docs:
        raise CliError(f"{path} holds no evidence records")
    return docs


def check_records(docs: Sequence[dict[str, Any]], keys: Consortium) -> list[dict[str, Any]]:
    """One result per record: ``ok``, the ``problem`` if not, what it reports and whom."""
    results = []
    for i, doc in enumerate(docs):
        problem = verify_evidence(doc, keys.replica_publics, registry=keys.registry)
        entry: dict[str, Any] = {
            "index": i,
            "ok": problem is None,
            "problem": problem,
            "kind": doc.get("kind"),
            "height": doc.get("height"),
            "reporter": doc.get("reporter"),
            "accused": doc.get("accused"),
        }
        if problem is None:
            entry["implicated"] = conflict_signers(evidence_from_json(doc))
        results.append(entry)
    return results
