"""Signed evidence records of misbehaviour found by the audit: what they hold, how they are
signed, and their strict JSON form.

Two kinds of evidence:

``conflicting-certificates``
    Two blocks at one height, each carrying a valid commit certificate (>= quorum signed commits
    of distinct consortium members), for different batch digests. PBFT's safety argument says
    this cannot happen with at most f faulty replicas, so the record proves on its own that
    more than f replicas misbehaved; the replicas that signed both certificates are named. A
    third party needs nothing but the consortium's public keys to check it.

``invalid-block``
    A peer served (over its HTTP API) a block that does not verify: altered transactions, a
    forged or broken certificate, a hash that does not match the header. HTTP answers are not
    signed by the peer, so this record rests on the reporter's signature: a third party can
    check that the reporter really signed it and that the exhibited block really is invalid,
    but must trust the reporter that the accused peer is the one that served it.

A record is signed by the reporting node's Ed25519 key over domain-separated canonical bytes
(``consensus.hashing.canonical``: a domain tag plus msgpack of a fixed-order tuple). Exhibits
(the blocks involved) are kept as canonical JSON text of the block as served, without payloads
(evidence never carries patient payloads, only their hashes), and the signature covers the
sha256 of each exhibit's text, so changing any byte of a record makes it fail verification
(``node.audit.verify_evidence``).

Evidence records are kept (deduplicated, bounded) by ``node.audit.log.AuditLog``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from consensus.hashing import canonical, h
from node import codec
from node.ledger import SIGNATURE_SIZE

EVIDENCE_FORMAT: Final = "medchain-evidence/1"
EVIDENCE_DOMAIN: Final = b"medchain/evidence"
FINGERPRINT_DOMAIN: Final = b"medchain/evidence-fingerprint"
KIND_CONFLICT: Final = "conflicting-certificates"
KIND_INVALID: Final = "invalid-block"
KINDS: Final = (KIND_CONFLICT, KIND_INVALID)

MAX_EXHIBITS: Final = 4
MAX_EXHIBIT_CHARS: Final = 8 * 1024 * 1024
"""A block of the largest batch, as JSON without payloads, fits well below this."""
MAX_MALFORMED_EXHIBIT_CHARS: Final = 64 * 1024
"""What is kept of an answer that is not even a parseable block (it only has to fail)."""
MAX_REASON_CHARS: Final = 1000
MAX_LABEL_CHARS: Final = 200
MAX_SOURCE_CHARS: Final = 300


class Signer(Protocol):
    """Anything that signs with the node's key (``node.crypto.Signer``, ``NodeCrypto``)."""

    def sign(self, data: bytes) -> bytes: ...


class EvidenceError(ValueError):
    """A malformed evidence record or block document; ``reason`` names the problem."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def canonical_json(doc: object) -> str:
    """Deterministic JSON text (sorted keys, no spaces, ASCII): what exhibits are stored as."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def strip_payloads(doc: object) -> object:
    """A copy of a block document without tx payloads (evidence never carries them)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("txs"), list):
        return doc
    txs = [
        {k: v for k, v in t.items() if k != "payload"} if isinstance(t, dict) else t
        for t in doc["txs"]
    ]
    return {**doc, "txs": txs}


def block_exhibit_text(doc: object) -> str:
    """The exhibit text of a served block document: canonical JSON, payloads stripped."""
    return canonical_json(strip_payloads(doc))


@dataclass(frozen=True, slots=True)
class Exhibit:
    """One block involved, as canonical JSON text (``block_exhibit_text``)."""

    label: str
    """Where it came from, e.g. "served by replica 2" or "local copy of replica 0"."""
    block: str

    def digest(self) -> bytes:
        return hashlib.sha256(self.block.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class EvidenceRecord:
    kind: str
    height: int
    reporter: int
    """Replica id of the node that found it and signed the record."""
    accused: int | None
    """Replica id of the peer that served the offending block (None if not attributable)."""
    source: str
    """The accused peer's URL as configured at the reporter."""
    observed_at_ms: int
    reason: str
    exhibits: tuple[Exhibit, ...]
    signature: bytes = b""

    def signing_bytes(self) -> bytes:
        return canonical(
            EVIDENCE_DOMAIN,
            (
                EVIDENCE_FORMAT,
                self.kind,
                self.height,
                self.reporter,
                -1 if self.accused is None else self.accused,
                self.source,
                self.observed_at_ms,
                self.reason,
                tuple((e.label, e.digest()) for e in self.exhibits),
            ),
        )

    def fingerprint(self) -> bytes:
        """Identity of the finding (not of the observation): the same bad block served twice
        by the same peer has one fingerprint, whenever it was seen and whoever signed."""
        return h(
            FINGERPRINT_DOMAIN,
            self.kind.encode(),
            self.height.to_bytes(8, "big"),
            (-1 if self.accused is None else self.accused).to_bytes(8, "big", signed=True),
            *sorted(e.digest() for e in self.exhibits),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": EVIDENCE_FORMAT,
            "id": self.fingerprint().hex(),
            "kind": self.kind,
            "height": self.height,
            "reporter": self.reporter,
            "accused": self.accused,
            "source": self.source,
            "observed_at_ms": self.observed_at_ms,
            "reason": self.reason,
            "exhibits": [{"label": e.label, "block": e.block} for e in self.exhibits],
            "signature": self.signature.hex(),
        }

    def summary(self) -> dict[str, Any]:
        """The record without its exhibits (for status pages)."""
        return {
            "id": self.fingerprint().hex(),
            "kind": self.kind,
            "height": self.height,
            "reporter": self.reporter,
            "accused": self.accused,
            "source": self.source,
            "observed_at_ms": self.observed_at_ms,
            "reason": self.reason,
        }


def _bounded_text(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def make_evidence(
    signer: Signer,
    *,
    kind: str,
    height: int,
    reporter: int,
    accused: int | None,
    source: str,
    reason: str,
    exhibits: Sequence[Exhibit],
    observed_at_ms: int | None = None,
) -> EvidenceRecord:
    """Build and sign a record. Long reasons and labels are shortened, never refused."""
    if kind not in KINDS:
        raise ValueError(f"unknown evidence kind {kind!r}")
    if not exhibits or len(exhibits) > MAX_EXHIBITS:
        raise ValueError(f"evidence needs 1..{MAX_EXHIBITS} exhibits")
    unsigned = EvidenceRecord(
        kind=kind,
        height=height,
        reporter=reporter,
        accused=accused,
        source=_bounded_text(source, MAX_SOURCE_CHARS),
        observed_at_ms=int(time.time() * 1000) if observed_at_ms is None else observed_at_ms,
        reason=_bounded_text(reason, MAX_REASON_CHARS),
        exhibits=tuple(Exhibit(_bounded_text(e.label, MAX_LABEL_CHARS), e.block) for e in exhibits),
    )
    for e in unsigned.exhibits:
        if len(e.block) > MAX_EXHIBIT_CHARS:
            raise ValueError(f"exhibit {e.label!r} exceeds {MAX_EXHIBIT_CHARS} characters")
    return dataclasses.replace(unsigned, signature=signer.sign(unsigned.signing_bytes()))


# ---------------------------------------------------------------------------------------------
# the strict JSON form


def evidence_from_json(doc: object, *, check_id: bool = True) -> EvidenceRecord:
    """Strictly parse a record in ``to_json`` form; EvidenceError naming the first problem.

    ``id`` (derived, not signed) must match the content when ``check_id``."""
    d = _mapping(doc, "evidence")
    if d.get("format") != EVIDENCE_FORMAT:
        raise EvidenceError(f"evidence.format: expected {EVIDENCE_FORMAT!r}")
    kind = _field(d, "kind", "evidence")
    if kind not in KINDS:
        raise EvidenceError(f"evidence.kind: expected one of {', '.join(KINDS)}")
    accused = _accused(d)
    exhibits = _exhibits(d)
    source = _short_text(d, "source", MAX_SOURCE_CHARS)
    reason = _short_text(d, "reason", MAX_REASON_CHARS)
    signature = _signature(d)
    record = EvidenceRecord(
        kind=kind,
        height=_int(d, "height", "evidence", lo=1),
        reporter=_int(d, "reporter", "evidence"),
        accused=accused,
        source=source,
        observed_at_ms=_int(d, "observed_at_ms", "evidence"),
        reason=reason,
        exhibits=exhibits,
        signature=signature,
    )
    if check_id and "id" in d and d["id"] != record.fingerprint().hex():
        raise EvidenceError("evidence.id does not match the record's content")
    return record


def _accused(d: Mapping[str, Any]) -> int | None:
    accused = _field(d, "accused", "evidence")
    if accused is not None and (type(accused) is not int or not 0 <= accused < codec.MAX_REPLICAS):
        raise EvidenceError("evidence.accused: expected a replica id or null")
    return accused


def _exhibits(d: Mapping[str, Any]) -> tuple[Exhibit, ...]:
    items = _list(_field(d, "exhibits", "evidence"), "evidence.exhibits", MAX_EXHIBITS)
    if not items:
        raise EvidenceError("evidence.exhibits: empty")
    exhibits = []
    for i, item in enumerate(items):
        e = _mapping(item, f"evidence.exhibits[{i}]")
        block = _field(e, "block", f"evidence.exhibits[{i}]")
        if type(block) is not str or len(block) > MAX_EXHIBIT_CHARS:
            raise EvidenceError(f"evidence.exhibits[{i}].block: expected a JSON text")
        exhibits.append(
            Exhibit(_str(e, "label", f"evidence.exhibits[{i}]", MAX_LABEL_CHARS), block)
        )
    return tuple(exhibits)


def _short_text(d: Mapping[str, Any], key: str, max_chars: int) -> str:
    """A free text field: may be empty (unlike labels), bounded."""
    value = _field(d, key, "evidence")
    if type(value) is not str or len(value) > max_chars:
        raise EvidenceError(f"evidence.{key}: expected a short string")
    return value


def _signature(d: Mapping[str, Any]) -> bytes:
    sig_hex = _field(d, "signature", "evidence")
    try:
        signature = bytes.fromhex(sig_hex) if type(sig_hex) is str else b""
    except ValueError:
        signature = b""
    if len(signature) != SIGNATURE_SIZE:
        raise EvidenceError("evidence.signature: expected 128 hex characters")
    return signature


def _field(doc: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in doc:
        raise EvidenceError(f"{what}: missing field {key!r}")
    return doc[key]


def _int(doc: Mapping[str, Any], key: str, what: str, *, lo: int = 0) -> int:
    value = _field(doc, key, what)
    if type(value) is not int or not lo <= value <= codec.MAX_UINT:
        raise EvidenceError(f"{what}.{key}: expected an integer >= {lo}")
    return value


def _str(doc: Mapping[str, Any], key: str, what: str, max_chars: int) -> str:
    value = _field(doc, key, what)
    if type(value) is not str or not 0 < len(value) <= max_chars or not value.isprintable():
        raise EvidenceError(
            f"{what}.{key}: expected a printable string of 1..{max_chars} characters"
        )
    return value


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise EvidenceError(f"{what}: expected an object, got {type(value).__name__}")
    return value


def _list(value: object, what: str, max_len: int) -> list[Any]:
    if not isinstance(value, list):
        raise EvidenceError(f"{what}: expected an array, got {type(value).__name__}")
    if len(value) > max_len:
        raise EvidenceError(f"{what}: {len(value)} elements exceeds the limit of {max_len}")
    return value
