"""Signed, offline-checkable evidence of misbehaviour found by the audit, and its bounded log.

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
sha256 of each exhibit's text, so changing any byte of a record makes it fail
:func:`verify_evidence`.

Also here: :func:`parse_block_json` / :func:`check_served_block`, the strict parser and
verifier of a block in the HTTP API's JSON form (``node.ledger.block_to_json``), with or without
payloads, and :func:`parse_header_json` / :func:`check_served_header` for the light form
without transactions (``node.ledger.header_to_json``). The audit compares peers' headers in
every round and fetches whole blocks only to look closer (and to exhibit them as evidence:
exhibits are always whole blocks, so a third party can recompute every id and root);
``verify_evidence`` uses the block functions on exhibits.

:class:`AuditLog` is the audit's own small SQLite database in the node's data directory
(``audit.sqlite``, never the chain's store): evidence records, audit events (detections,
repairs) and blocks quarantined while awaiting repair. Every table is bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from consensus.hashing import batch_digest, canonical, chain_link, h, merkle_root
from consensus.messages import NO_PROPOSER, Commit
from node import codec
from node.crypto import verify
from node.ledger import (
    HASH_SIZE,
    KEY_SIZE,
    MAX_HOSPITAL_CHARS,
    MAX_PATIENT_CHARS,
    MAX_RECORD_ID_CHARS,
    MAX_RECORD_TYPE_CHARS,
    NONCE_SIZE,
    SIGNATURE_SIZE,
    Block,
    ClientRegistry,
    Transaction,
    TxEnvelope,
    VerifiedCommits,
    block_to_json,
    payload_hash,
    quorum_size,
    verify_certificate,
)

EVIDENCE_FORMAT: Final = "medchain-evidence/1"
EVIDENCE_DOMAIN: Final = b"medchain/evidence"
FINGERPRINT_DOMAIN: Final = b"medchain/evidence-fingerprint"
KIND_CONFLICT: Final = "conflicting-certificates"
KIND_INVALID: Final = "invalid-block"
KINDS: Final = (KIND_CONFLICT, KIND_INVALID)

AUDIT_DB_NAME: Final = "audit.sqlite"
"""File name of the audit's database inside a node's data directory."""

MAX_EXHIBITS: Final = 4
MAX_EXHIBIT_CHARS: Final = 8 * 1024 * 1024
"""A block of the largest batch, as JSON without payloads, fits well below this."""
MAX_MALFORMED_EXHIBIT_CHARS: Final = 64 * 1024
"""What is kept of an answer that is not even a parseable block (it only has to fail)."""
MAX_REASON_CHARS: Final = 1000
MAX_LABEL_CHARS: Final = 200
MAX_SOURCE_CHARS: Final = 300
MAX_RECORD_FILE_BYTES: Final = 256 * 1024 * 1024
"""``--check-evidence`` refuses larger files (bounded memory)."""

_MAX_TXS: Final = codec.MAX_ITEMS
_HEX32: Final = 2 * HASH_SIZE


class Signer(Protocol):
    """Anything that signs with the node's key (``node.crypto.Signer``, ``NodeCrypto``)."""

    def sign(self, data: bytes) -> bytes: ...


class EvidenceError(ValueError):
    """A malformed evidence record or block document; ``reason`` names the problem."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# blocks in JSON form (as the HTTP API serves them)


@dataclass(frozen=True, slots=True)
class ServedBlock:
    """A block as a peer served it in JSON: header, tx headers, certificate; payloads optional.

    Nothing here is trusted: ``claimed_*`` fields are what the document says, and
    :func:`check_served_block` recomputes everything they must agree with.
    """

    height: int
    block_hash: bytes
    prev_hash: bytes
    merkle_root: bytes
    claimed_digest: bytes
    view: int
    proposer: int
    timestamp_ms: int
    txs: tuple[Transaction, ...]
    claimed_tx_ids: tuple[bytes, ...]
    payloads: tuple[bytes | None, ...]
    commits: tuple[Commit, ...]

    @property
    def digest(self) -> bytes:
        """The batch digest recomputed from the header fields (what the commits must sign)."""
        return batch_digest(
            self.view, self.proposer, self.timestamp_ms, self.merkle_root, len(self.txs)
        )

    @property
    def is_null(self) -> bool:
        return self.proposer == NO_PROPOSER

    def to_block(self) -> Block:
        """The ledger block, if every payload was served; EvidenceError otherwise."""
        envs = []
        for i, (tx, payload) in enumerate(zip(self.txs, self.payloads, strict=True)):
            if payload is None:
                raise EvidenceError(f"tx {i} was served without its payload")
            envs.append(TxEnvelope(tx=tx, payload=payload))
        return Block(
            height=self.height,
            prev_hash=self.prev_hash,
            block_hash=self.block_hash,
            merkle_root=self.merkle_root,
            view=self.view,
            proposer=self.proposer,
            timestamp_ms=self.timestamp_ms,
            txs=tuple(envs),
            commits=self.commits,
        )


def _field(doc: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in doc:
        raise EvidenceError(f"{what}: missing field {key!r}")
    return doc[key]


def _int(doc: Mapping[str, Any], key: str, what: str, *, lo: int = 0) -> int:
    value = _field(doc, key, what)
    if type(value) is not int or not lo <= value <= codec.MAX_UINT:
        raise EvidenceError(f"{what}.{key}: expected an integer >= {lo}")
    return value


def _hex(doc: Mapping[str, Any], key: str, what: str, size: int) -> bytes:
    value = _field(doc, key, what)
    if type(value) is not str or len(value) != 2 * size:
        raise EvidenceError(f"{what}.{key}: expected {2 * size} hex characters")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise EvidenceError(f"{what}.{key}: not valid hex") from None


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


def _parse_tx(raw: object, what: str) -> tuple[Transaction, bytes, bytes | None]:
    doc = _mapping(raw, what)
    tx = Transaction(
        record_id=_str(doc, "record_id", what, MAX_RECORD_ID_CHARS),
        patient=_str(doc, "patient", what, MAX_PATIENT_CHARS),
        hospital=_str(doc, "hospital", what, MAX_HOSPITAL_CHARS),
        record_type=_str(doc, "record_type", what, MAX_RECORD_TYPE_CHARS),
        payload_hash=_hex(doc, "payload_hash", what, HASH_SIZE),
        timestamp_ms=_int(doc, "timestamp_ms", what),
        nonce=_hex(doc, "nonce", what, NONCE_SIZE),
        client_key=_hex(doc, "client_key", what, KEY_SIZE),
        signature=_hex(doc, "signature", what, SIGNATURE_SIZE),
    )
    claimed_id = _hex(doc, "tx_id", what, HASH_SIZE)
    payload: bytes | None = None
    if doc.get("payload") is not None:
        text = doc["payload"]
        if type(text) is not str or len(text) % 2:
            raise EvidenceError(f"{what}.payload: expected hex")
        try:
            payload = bytes.fromhex(text)
        except ValueError:
            raise EvidenceError(f"{what}.payload: not valid hex") from None
    return tx, claimed_id, payload


def _parse_commit(raw: object, what: str) -> Commit:
    doc = _mapping(raw, what)
    replica = _int(doc, "replica", what)
    if replica >= codec.MAX_REPLICAS:
        raise EvidenceError(f"{what}.replica: {replica} out of range")
    return Commit(
        view=_int(doc, "view", what),
        seq=_int(doc, "seq", what),
        digest=_hex(doc, "digest", what, HASH_SIZE),
        replica=replica,
        signature=_hex(doc, "signature", what, SIGNATURE_SIZE),
    )


def parse_block_json(doc: object) -> ServedBlock:
    """Strictly parse a block in ``block_to_json`` form; EvidenceError naming the first problem.

    Checks structure only (types, sizes, bounds); validity is :func:`check_served_block`'s job.
    """
    d = _mapping(doc, "block")
    height = _int(d, "height", "block", lo=1)
    proposer = _field(d, "proposer", "block")
    if type(proposer) is not int or not NO_PROPOSER <= proposer < codec.MAX_REPLICAS:
        raise EvidenceError("block.proposer: expected a replica id or -1")
    tx_items = _list(_field(d, "txs", "block"), "block.txs", _MAX_TXS)
    parsed = [_parse_tx(t, f"block.txs[{i}]") for i, t in enumerate(tx_items)]
    tx_count = _int(d, "tx_count", "block")
    if tx_count != len(parsed):
        raise EvidenceError(f"block.tx_count: says {tx_count} but {len(parsed)} txs were served")
    cert = _list(_field(d, "certificate", "block"), "block.certificate", codec.MAX_REPLICAS)
    return ServedBlock(
        height=height,
        block_hash=_hex(d, "hash", "block", HASH_SIZE),
        prev_hash=_hex(d, "prev_hash", "block", HASH_SIZE),
        merkle_root=_hex(d, "merkle_root", "block", HASH_SIZE),
        claimed_digest=_hex(d, "digest", "block", HASH_SIZE),
        view=_int(d, "view", "block"),
        proposer=proposer,
        timestamp_ms=_int(d, "timestamp_ms", "block"),
        txs=tuple(tx for tx, _, _ in parsed),
        claimed_tx_ids=tuple(tx_id for _, tx_id, _ in parsed),
        payloads=tuple(p for _, _, p in parsed),
        commits=tuple(_parse_commit(c, f"block.certificate[{i}]") for i, c in enumerate(cert)),
    )


def served_from_block(block: Block) -> ServedBlock:
    """A local block in the same form as a served one (for like-for-like comparison)."""
    return parse_block_json(block_to_json(block))


def check_served_block(
    block: ServedBlock,
    consortium: Sequence[bytes],
    *,
    registry: ClientRegistry | None = None,
    known_signatures: Mapping[bytes, bytes] | None = None,
    verified_commits: VerifiedCommits | None = None,
) -> str | None:
    """None if the served block is internally valid; else the first problem found.

    The same checks as ``ledger.verify_block`` minus the link to the previous block (a caller
    that knows it compares ``prev_hash`` itself) and minus payload policy: tx ids recomputed
    from the tx headers, the Merkle root, the batch digest, the block hash, the commit
    certificate, every tx signature (under the tx's own client key; with ``registry`` also
    that the key is registered for the hospital) and, where served, each payload's hash.

    ``known_signatures`` maps tx ids to signatures already verified elsewhere (our own copy of
    the block), so an honest peer's copy of a block we hold costs no tx signature checks;
    ``verified_commits`` likewise spares commit signatures already checked.
    Cheap checks run first; signatures last.
    """
    if block.proposer != NO_PROPOSER and not 0 <= block.proposer < len(consortium):
        return f"proposer {block.proposer} is not a consortium member"
    if block.is_null and block.txs:
        return "null block carries transactions"
    tx_ids = tuple(tx.tx_id for tx in block.txs)
    for i, (tx_id, claimed) in enumerate(zip(tx_ids, block.claimed_tx_ids, strict=True)):
        if tx_id != claimed:
            return f"tx {i} ({claimed.hex()[:16]}) does not match its tx_id"
    if len(set(tx_ids)) != len(tx_ids):
        return "duplicate tx id in block"
    for i, (tx, payload) in enumerate(zip(block.txs, block.payloads, strict=True)):
        if payload is not None and payload_hash(payload) != tx.payload_hash:
            return f"tx {i} ({tx_ids[i].hex()[:16]}): payload hash mismatch"
    if merkle_root(tx_ids) != block.merkle_root:
        return "merkle root does not match the transactions"
    digest = block.digest
    if digest != block.claimed_digest:
        return "digest does not match the header"
    if chain_link(block.height, block.prev_hash, digest) != block.block_hash:
        return "block hash does not match the header"
    problem = verify_certificate(
        block.height,
        digest,
        block.commits,
        consortium,
        quorum_size(len(consortium)),
        verified=verified_commits,
    )
    if problem:
        return problem
    known = known_signatures or {}
    for i, (tx_id, tx) in enumerate(zip(tx_ids, block.txs, strict=True)):
        if registry is not None and registry.hospital_of(tx.client_key) != tx.hospital:
            return f"tx {i} ({tx_id.hex()[:16]}): client key not registered for {tx.hospital!r}"
        if known.get(tx_id) == tx.signature:
            continue
        if not verify(tx.client_key, tx.header_bytes(), tx.signature):
            return f"tx {i} ({tx_id.hex()[:16]}): bad signature"
    return None


@dataclass(frozen=True, slots=True)
class ServedHeader:
    """A block header as a peer served it (``ledger.header_to_json``): no transactions.

    As for :class:`ServedBlock`, nothing is trusted: :func:`check_served_header` recomputes the
    digest and the block hash and verifies the certificate. The Merkle root cannot be checked
    without the transactions; the block hash and the certificate bind it all the same.
    """

    height: int
    block_hash: bytes
    prev_hash: bytes
    merkle_root: bytes
    claimed_digest: bytes
    view: int
    proposer: int
    timestamp_ms: int
    tx_count: int
    commits: tuple[Commit, ...]

    @property
    def digest(self) -> bytes:
        return batch_digest(
            self.view, self.proposer, self.timestamp_ms, self.merkle_root, self.tx_count
        )

    @property
    def is_null(self) -> bool:
        return self.proposer == NO_PROPOSER


def parse_header_json(doc: object) -> ServedHeader:
    """Strictly parse a header in ``header_to_json`` form (a whole block document parses too:
    its transactions are ignored, ``tx_count`` stands for them); EvidenceError naming the first
    problem. Structure only: validity is :func:`check_served_header`'s job."""
    d = _mapping(doc, "header")
    proposer = _field(d, "proposer", "header")
    if type(proposer) is not int or not NO_PROPOSER <= proposer < codec.MAX_REPLICAS:
        raise EvidenceError("header.proposer: expected a replica id or -1")
    tx_count = _int(d, "tx_count", "header")
    if tx_count > _MAX_TXS:
        raise EvidenceError(f"header.tx_count: {tx_count} exceeds the limit of {_MAX_TXS}")
    cert = _list(_field(d, "certificate", "header"), "header.certificate", codec.MAX_REPLICAS)
    return ServedHeader(
        height=_int(d, "height", "header", lo=1),
        block_hash=_hex(d, "hash", "header", HASH_SIZE),
        prev_hash=_hex(d, "prev_hash", "header", HASH_SIZE),
        merkle_root=_hex(d, "merkle_root", "header", HASH_SIZE),
        claimed_digest=_hex(d, "digest", "header", HASH_SIZE),
        view=_int(d, "view", "header"),
        proposer=proposer,
        timestamp_ms=_int(d, "timestamp_ms", "header"),
        tx_count=tx_count,
        commits=tuple(_parse_commit(c, f"header.certificate[{i}]") for i, c in enumerate(cert)),
    )


def check_served_header(
    header: ServedHeader,
    consortium: Sequence[bytes],
    *,
    verified_commits: VerifiedCommits | None = None,
) -> str | None:
    """None if the served header is internally valid: digest and block hash recomputed from its
    fields, and a commit certificate (>= quorum of distinct consortium members) for that
    digest. A few signatures at most, and none already in ``verified_commits``."""
    if header.proposer != NO_PROPOSER and not 0 <= header.proposer < len(consortium):
        return f"proposer {header.proposer} is not a consortium member"
    if header.is_null and header.tx_count:
        return "null block carries transactions"
    digest = header.digest
    if digest != header.claimed_digest:
        return "digest does not match the header"
    if chain_link(header.height, header.prev_hash, digest) != header.block_hash:
        return "block hash does not match the header"
    return verify_certificate(
        header.height,
        digest,
        header.commits,
        consortium,
        quorum_size(len(consortium)),
        verified=verified_commits,
    )


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


# ---------------------------------------------------------------------------------------------
# evidence records


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
    return EvidenceRecord(
        kind=unsigned.kind,
        height=unsigned.height,
        reporter=unsigned.reporter,
        accused=unsigned.accused,
        source=unsigned.source,
        observed_at_ms=unsigned.observed_at_ms,
        reason=unsigned.reason,
        exhibits=unsigned.exhibits,
        signature=signer.sign(unsigned.signing_bytes()),
    )


def evidence_from_json(doc: object, *, check_id: bool = True) -> EvidenceRecord:
    """Strictly parse a record in ``to_json`` form; EvidenceError naming the first problem.

    ``id`` (derived, not signed) must match the content when ``check_id``."""
    d = _mapping(doc, "evidence")
    if d.get("format") != EVIDENCE_FORMAT:
        raise EvidenceError(f"evidence.format: expected {EVIDENCE_FORMAT!r}")
    kind = _field(d, "kind", "evidence")
    if kind not in KINDS:
        raise EvidenceError(f"evidence.kind: expected one of {', '.join(KINDS)}")
    accused = _field(d, "accused", "evidence")
    if accused is not None and (type(accused) is not int or not 0 <= accused < codec.MAX_REPLICAS):
        raise EvidenceError("evidence.accused: expected a replica id or null")
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
    source = _field(d, "source", "evidence")
    reason = _field(d, "reason", "evidence")
    if type(source) is not str or len(source) > MAX_SOURCE_CHARS:
        raise EvidenceError("evidence.source: expected a short string")
    if type(reason) is not str or len(reason) > MAX_REASON_CHARS:
        raise EvidenceError("evidence.reason: expected a short string")
    sig_hex = _field(d, "signature", "evidence")
    try:
        signature = bytes.fromhex(sig_hex) if type(sig_hex) is str else b""
    except ValueError:
        signature = b""
    if len(signature) != SIGNATURE_SIZE:
        raise EvidenceError("evidence.signature: expected 128 hex characters")
    record = EvidenceRecord(
        kind=kind,
        height=_int(d, "height", "evidence", lo=1),
        reporter=_int(d, "reporter", "evidence"),
        accused=accused,
        source=source,
        observed_at_ms=_int(d, "observed_at_ms", "evidence"),
        reason=reason,
        exhibits=tuple(exhibits),
        signature=signature,
    )
    if check_id and "id" in d and d["id"] != record.fingerprint().hex():
        raise EvidenceError("evidence.id does not match the record's content")
    return record


def _exhibit_block(exhibit: Exhibit) -> ServedBlock:
    try:
        doc = json.loads(exhibit.block)
    except ValueError:
        raise EvidenceError("not valid JSON") from None
    return parse_block_json(doc)


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


# ---------------------------------------------------------------------------------------------
# the audit's persistent log


_SCHEMA: Final = """
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
CREATE TABLE IF NOT EXISTS events (
    id     INTEGER PRIMARY KEY,
    at_ms  INTEGER NOT NULL,
    kind   TEXT NOT NULL,
    height INTEGER,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    height         INTEGER PRIMARY KEY,
    detected_at_ms INTEGER NOT NULL,
    reason         TEXT NOT NULL,
    data           BLOB
);
"""


@dataclass(frozen=True, slots=True)
class AuditEvent:
    id: int
    at_ms: int
    kind: str
    """tamper-detected | repaired | repair-failed | resolved | evidence | startup-check"""
    height: int | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at_ms": self.at_ms,
            "kind": self.kind,
            "height": self.height,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class QuarantineRow:
    height: int
    detected_at_ms: int
    reason: str
    data: bytes | None
    """The corrupt stored bytes at detection time (None if the block did not exist)."""


class AuditLog:
    """The audit's SQLite database (``DATA_DIR/audit.sqlite``; ``None`` keeps it in memory).

    Bounded: at most ``max_evidence`` records and ``max_events`` events (the oldest go first)
    and ``max_quarantine`` quarantined blocks. One connection, used from the node's event loop
    thread; every write is one short transaction.
    """

    def __init__(
        self,
        path: str | Path | None,
        *,
        max_evidence: int = 256,
        max_events: int = 1000,
        max_quarantine: int = 1024,
        read_only: bool = False,
    ) -> None:
        if min(max_evidence, max_events, max_quarantine) < 1:
            raise ValueError("AuditLog bounds must be positive")
        self.path = None if path is None else Path(path)
        self.max_evidence = max_evidence
        self.max_events = max_events
        self.max_quarantine = max_quarantine
        if self.path is None:
            self._db = sqlite3.connect(":memory:", isolation_level=None)
        elif read_only:
            self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
        else:
            self._db = sqlite3.connect(self.path, isolation_level=None)
        try:
            if not read_only:
                if self.path is not None:
                    self._db.execute("PRAGMA journal_mode=WAL")
                self._db.executescript(_SCHEMA)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- evidence ----------------------------------------------------------------------------

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

    # -- events ------------------------------------------------------------------------------

    def add_event(self, kind: str, height: int | None, detail: str) -> AuditEvent:
        at_ms = int(time.time() * 1000)
        detail = _bounded_text(detail, MAX_REASON_CHARS)
        with self._write():
            cur = self._db.execute(
                "INSERT INTO events(at_ms, kind, height, detail) VALUES (?, ?, ?, ?)",
                (at_ms, kind, height, detail),
            )
            self._trim("events", self.max_events)
        return AuditEvent(int(cur.lastrowid or 0), at_ms, kind, height, detail)

    def events(self, limit: int = 50) -> list[AuditEvent]:
        """Newest first."""
        rows = self._db.execute(
            "SELECT id, at_ms, kind, height, detail FROM events ORDER BY id DESC LIMIT ?",
            (max(0, limit),),
        ).fetchall()
        return [AuditEvent(int(i), int(t), str(k), hh, str(d)) for i, t, k, hh, d in rows]

    def event_counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT kind, COUNT(*) FROM events GROUP BY kind").fetchall()
        return {str(k): int(n) for k, n in rows}

    # -- quarantine --------------------------------------------------------------------------

    def quarantine(self, height: int, reason: str, data: bytes | None) -> bool:
        """Remember a corrupt block's bytes until it is repaired; False if the table is full
        (the block is still refused and repaired, only its bytes are not kept)."""
        with self._write():
            count = int(self._db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0])
            exists = self._db.execute(
                "SELECT 1 FROM quarantine WHERE height = ?", (height,)
            ).fetchone()
            if exists is None and count >= self.max_quarantine:
                return False
            self._db.execute(
                "INSERT INTO quarantine(height, detected_at_ms, reason, data) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(height) DO UPDATE SET reason = excluded.reason, data = excluded.data",
                (height, int(time.time() * 1000), _bounded_text(reason, MAX_REASON_CHARS), data),
            )
        return True

    def release(self, height: int) -> None:
        with self._write():
            self._db.execute("DELETE FROM quarantine WHERE height = ?", (height,))

    def quarantined(self) -> list[QuarantineRow]:
        rows = self._db.execute(
            "SELECT height, detected_at_ms, reason, data FROM quarantine ORDER BY height"
        ).fetchall()
        return [
            QuarantineRow(int(hh), int(t), str(r), None if d is None else bytes(d))
            for hh, t, r, d in rows
        ]

    def _trim(self, table: str, keep: int) -> None:
        # Table names are our own constants, never input.
        self._db.execute(
            f"DELETE FROM {table} WHERE id NOT IN "
            f"(SELECT id FROM {table} ORDER BY id DESC LIMIT ?)",
            (keep,),
        )


__all__ = [
    "AUDIT_DB_NAME",
    "EVIDENCE_FORMAT",
    "KINDS",
    "KIND_CONFLICT",
    "KIND_INVALID",
    "AuditEvent",
    "AuditLog",
    "EvidenceError",
    "EvidenceRecord",
    "Exhibit",
    "QuarantineRow",
    "ServedBlock",
    "ServedHeader",
    "block_exhibit_text",
    "canonical_json",
    "check_served_block",
    "check_served_header",
    "conflict_signers",
    "evidence_from_json",
    "exhibit_problem",
    "load_evidence_file",
    "make_evidence",
    "parse_block_json",
    "parse_header_json",
    "served_from_block",
    "strip_payloads",
    "verify_evidence",
]
