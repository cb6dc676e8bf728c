"""Offline verification of evidence records, for anyone holding the consortium's public keys.

A record is *authentic* when the reporting replica's key signed its canonical bytes, and
*substantiated* when its exhibits show what it claims: two validly certified blocks for
different batches at one height (``conflicting-certificates``), or a block that indeed fails
verification (``invalid-block``). Exhibits are checked as served blocks
(``node.audit.served``). Also here: the replicas a conflict convicts, and reading records from
a file (``medchain audit --check-evidence``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from node.audit.evidence import (
    KIND_CONFLICT,
    EvidenceError,
    EvidenceRecord,
    Exhibit,
    evidence_from_json,
)
from node.audit.served import ServedBlock, check_served_block, parse_block_json
from node.crypto import verify
from node.ledger import ClientRegistry

MAX_RECORD_FILE_BYTES: Final = 256 * 1024 * 1024
"""``--check-evidence`` refuses larger files (bounded memory)."""


def verify_evidence(
    record: EvidenceRecord | Mapping[str, Any],
    consortium_publics: Sequence[bytes],
    *,
    registry: ClientRegistry | None = None,
) -> str | None:
    """None if ``record`` is authentic and substantiated; else the problem, for anyone holding
    the consortium's public keys, offline.

    Authentic: signed by the reporting replica's key over the record's canonical bytes (so
    any changed byte, in the reason, the height or an exhibit, fails). Substantiated:
    ``conflicting-certificates`` exhibits two blocks at the record's height whose certificates
    both verify, for different digests; ``invalid-block`` exhibits a block that indeed fails
    verification. With ``registry``, tx signers must also be registered clients.
    """
    try:
        if isinstance(record, EvidenceRecord):
            rec = record
        else:
            # The signature is checked before the derived id: a changed field is then
            # reported as what it is, an altered record.
            rec = evidence_from_json(record, check_id=False)
    except EvidenceError as e:
        return f"malformed record: {e.reason}"
    if not 0 <= rec.reporter < len(consortium_publics):
        return f"reporter {rec.reporter} is not a consortium member"
    if not verify(consortium_publics[rec.reporter], rec.signing_bytes(), rec.signature):
        return f"signature is not valid for reporter {rec.reporter} (record altered or forged)"
    if isinstance(record, Mapping) and record.get("id", rec.fingerprint().hex()) != (
        rec.fingerprint().hex()
    ):
        return "id does not match the record's content"
    if rec.kind == KIND_CONFLICT:
        return _substantiate_conflict(rec, consortium_publics, registry)
    return _substantiate_invalid(rec, consortium_publics, registry)


def exhibit_problem(
    text: str,
    consortium: Sequence[bytes],
    *,
    registry: ClientRegistry | None = None,
    height: int | None = None,
) -> str | None:
    """What is wrong with an exhibited block (None if it verifies as shown). An exhibit has no
    payloads, so a block whose only fault is a payload that does not match its hash looks
    valid here: such a finding cannot be evidence (evidence never carries patient payloads)."""
    try:
        block = _exhibit_block(Exhibit("", text))
    except EvidenceError as e:
        return f"malformed block: {e.reason}"
    if height is not None and block.height != height:
        return f"block {block.height} where {height} was expected"
    return check_served_block(block, consortium, registry=registry)


def conflict_signers(record: EvidenceRecord) -> list[int]:
    """Replicas whose commits appear in both certificates of a conflict record: each signed
    commits for two different batches at one sequence number."""
    if record.kind != KIND_CONFLICT or len(record.exhibits) != 2:
        return []
    try:
        a, b = (_exhibit_block(e) for e in record.exhibits)
    except EvidenceError:
        return []
    return sorted({c.replica for c in a.commits} & {c.replica for c in b.commits})


def load_evidence_file(path: Path) -> list[dict[str, Any]]:
    """Records from a file: one record (JSON object), an array of records, a GET /audit/evidence
    answer ``{"evidence": [...]}``, or JSON lines. EvidenceError if it is none of these."""
    try:
        size = path.stat().st_size
        if size > MAX_RECORD_FILE_BYTES:
            raise EvidenceError(f"{path} is {size} bytes, limit {MAX_RECORD_FILE_BYTES}")
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise EvidenceError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise EvidenceError(f"{path} is not UTF-8 text") from None
    try:
        docs: object = json.loads(text)
    except ValueError:
        try:
            docs = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError:
            raise EvidenceError(f"{path} is neither JSON nor JSON lines") from None
    if isinstance(docs, dict) and isinstance(docs.get("evidence"), list):
        docs = docs["evidence"]
    if isinstance(docs, dict):
        docs = [docs]
    if not isinstance(docs, list) or not all(isinstance(d, dict) for d in docs):
        raise EvidenceError(f"{path} does not hold evidence records (JSON objects)")
    return docs


def _exhibit_block(exhibit: Exhibit) -> ServedBlock:
    try:
        doc = json.loads(exhibit.block)
    except ValueError:
        raise EvidenceError("not valid JSON") from None
    return parse_block_json(doc)


def _substantiate_conflict(
    rec: EvidenceRecord, consortium: Sequence[bytes], registry: ClientRegistry | None
) -> str | None:
    if len(rec.exhibits) != 2:
        return f"{KIND_CONFLICT} needs exactly 2 exhibits, has {len(rec.exhibits)}"
    blocks = []
    for i, exhibit in enumerate(rec.exhibits):
        try:
            block = _exhibit_block(exhibit)
        except EvidenceError as e:
            return f"exhibit {i} is not a block: {e.reason}"
        if block.height != rec.height:
            return f"exhibit {i} is block {block.height}, the record is about {rec.height}"
        problem = check_served_block(block, consortium, registry=registry)
        if problem:
            return f"exhibit {i} does not verify ({problem}): not a conflict of certificates"
        blocks.append(block)
    if blocks[0].digest == blocks[1].digest:
        return "the exhibits certify the same batch digest: no conflict at this height"
    return None


def _substantiate_invalid(
    rec: EvidenceRecord, consortium: Sequence[bytes], registry: ClientRegistry | None
) -> str | None:
    try:
        block = _exhibit_block(rec.exhibits[0])
    except EvidenceError:
        return None  # not even a well-formed block: invalid as claimed
    if block.height != rec.height:
        return f"exhibit 0 is block {block.height}, the record is about {rec.height}"
    if check_served_block(block, consortium, registry=registry) is None:
        return "the exhibited block verifies: the record does not substantiate its claim"
    return None
