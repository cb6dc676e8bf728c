"""Transactions, blocks, commit certificates and chain verification.

A transaction is a signed header about one patient record plus the record's payload beside it.
The header carries ``sha256(payload)``; the signature, the tx id and the block's Merkle leaf all
cover the header only. The payload can therefore later be encrypted, held only by entitled
hospitals, or erased, while every signature, root, certificate and hash link still verifies.
All payload handling lives in this module (the TxEnvelope type and the functions that build,
encode, decode and check it) so that payload encryption arrives as a local change.

A block is what consensus decided at one sequence number: the batch's header fields, its
transactions and the commit certificate (2f+1 signed commits from distinct replicas). Its hash is
``chain_link(height, prev_hash, batch_digest)``, exactly what the consensus core computed, so any
holder of the consortium's public keys can verify a chain offline (``medchain verify``, audit,
state transfer) with :func:`verify_block` / :func:`verify_chain`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from consensus.events import Committed
from consensus.hashing import (
    GENESIS_HASH,
    batch_digest,
    canonical,
    chain_link,
    h,
    merkle_root,
)
from consensus.messages import NO_PROPOSER, Batch, CertifiedBlock, Commit
from node import codec
from node.codec import CodecError
from node.crypto import Signer, public_key_from_hex, verify

TX_DOMAIN: Final = b"medchain/tx"
TX_ID_DOMAIN: Final = b"medchain/tx-id"

MAX_RECORD_ID_CHARS: Final = 128
MAX_PATIENT_CHARS: Final = 128
MAX_HOSPITAL_CHARS: Final = 64
MAX_RECORD_TYPE_CHARS: Final = 64
NONCE_SIZE: Final = 16
KEY_SIZE: Final = 32
HASH_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64

MAX_PAYLOAD_BYTES: Final = 64 * 1024
"""Default policy cap on a payload, enforced at admission and by :func:`check_tx`."""
HARD_MAX_PAYLOAD_BYTES: Final = 1024 * 1024
"""What the decoders accept whatever the policy: bounds memory for any input."""
_TX_OVERHEAD_BYTES: Final = 2048
"""Room for a tx's header fields in its encoding (strings are bounded above)."""
MAX_TX_BYTES: Final = HARD_MAX_PAYLOAD_BYTES + _TX_OVERHEAD_BYTES
MAX_BLOCK_BYTES: Final = codec.MAX_FRAME_BYTES

TX_FORMAT: Final = 1
BLOCK_FORMAT: Final = 1
"""Leading element of an encoded tx / block, so a future layout (encrypted payloads) can coexist."""

_STRING_FIELDS: Final = (
    ("record_id", MAX_RECORD_ID_CHARS),
    ("patient", MAX_PATIENT_CHARS),
    ("hospital", MAX_HOSPITAL_CHARS),
    ("record_type", MAX_RECORD_TYPE_CHARS),
)
_BYTES_FIELDS: Final = (
    ("payload_hash", HASH_SIZE),
    ("nonce", NONCE_SIZE),
    ("client_key", KEY_SIZE),
    ("signature", SIGNATURE_SIZE),
)


class LedgerError(ValueError):
    """A transaction or block is invalid; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# transactions


@dataclass(frozen=True, slots=True)
class Transaction:
    """The signed header of a patient-record transaction (the payload travels beside it)."""

    record_id: str
    """Client-chosen id of the record (unique per client by convention, not enforced)."""
    patient: str
    """Pseudonymous patient id: nothing clinical or identifying in clear on chain."""
    hospital: str
    record_type: str
    payload_hash: bytes
    """sha256 of the payload."""
    timestamp_ms: int
    """Client's clock; informational (consensus never reads clocks)."""
    nonce: bytes
    client_key: bytes
    """Ed25519 public key of the submitting hospital client."""
    signature: bytes
    _tx_id: bytes | None = field(default=None, init=False, repr=False, compare=False)
    """Memo of :attr:`tx_id` (msgpack + sha256 on every access cost 10% of a node's CPU)."""

    def header_fields(self) -> tuple[object, ...]:
        return (
            self.record_id,
            self.patient,
            self.hospital,
            self.record_type,
            self.payload_hash,
            self.timestamp_ms,
            self.nonce,
            self.client_key,
        )

    def header_bytes(self) -> bytes:
        """What the client signs and what the tx id hashes: every field but the signature."""
        return canonical(TX_DOMAIN, self.header_fields())

    @property
    def tx_id(self) -> bytes:
        cached = self._tx_id
        if cached is None:
            cached = tx_id_of(self.header_fields())
            # The id is a pure function of the (frozen) fields, so memoising it changes nothing
            # observable; it is excluded from eq/hash/repr, and dataclasses.replace() resets it.
            object.__setattr__(self, "_tx_id", cached)
        return cached


def tx_id_of(header_fields: Sequence[object]) -> bytes:
    """The tx id of a transaction's header fields (``Transaction.header_fields()`` order)."""
    return h(TX_ID_DOMAIN, canonical(TX_DOMAIN, tuple(header_fields)))


@dataclass(frozen=True, slots=True)
class TxEnvelope:
    """A transaction with its payload: the unit clients submit and blocks carry."""

    tx: Transaction
    payload: bytes

    @property
    def tx_id(self) -> bytes:
        return self.tx.tx_id


def payload_hash(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()


class ClientRegistry:
    """Which hospital each client public key submits for (from the cluster config)."""

    __slots__ = ("_by_key",)

    def __init__(self, entries: Mapping[bytes, str] | Iterable[tuple[bytes, str]] = ()) -> None:
        pairs = entries.items() if isinstance(entries, Mapping) else entries
        by_key: dict[bytes, str] = {}
        for key, hospital in pairs:
            if type(key) is not bytes or len(key) != KEY_SIZE:
                raise ValueError(f"client key for {hospital!r} must be {KEY_SIZE} bytes")
            if not isinstance(hospital, str) or _string_problem(hospital, MAX_HOSPITAL_CHARS):
                raise ValueError(f"invalid hospital name {hospital!r}")
            if by_key.get(key, hospital) != hospital:
                raise ValueError(
                    f"client key {key.hex()} registered for both {by_key[key]!r} and {hospital!r}"
                )
            by_key[key] = hospital
        self._by_key = by_key

    @classmethod
    def from_hex(cls, pairs: Iterable[tuple[str, str]]) -> ClientRegistry:
        """From config ``[[clients]]`` entries: ``(hospital, public_key_hex)`` pairs."""
        return cls((public_key_from_hex(key_hex), hospital) for hospital, key_hex in pairs)

    def hospital_of(self, client_key: bytes) -> str | None:
        return self._by_key.get(client_key)

    def __contains__(self, client_key: object) -> bool:
        return client_key in self._by_key

    def __len__(self) -> int:
        return len(self._by_key)

    def items(self) -> list[tuple[bytes, str]]:
        return list(self._by_key.items())


def make_transaction(
    client_secret: bytes,
    hospital: str,
    patient: str,
    record_type: str,
    payload: bytes,
    record_id: str | None = None,
    timestamp_ms: int | None = None,
    nonce: bytes | None = None,
    *,
    max_payload: int = MAX_PAYLOAD_BYTES,
) -> TxEnvelope:
    """Build and sign a transaction (client side). Raises LedgerError on invalid fields.

    Without ``record_id`` / ``nonce`` / ``timestamp_ms``, a random UUID, 16 random bytes and the
    current time are used.
    """
    problem = _payload_problem(payload, max_payload)
    if problem:
        raise LedgerError(problem)
    signer = Signer(client_secret)
    unsigned = Transaction(
        record_id=str(uuid.uuid4()) if record_id is None else record_id,
        patient=patient,
        hospital=hospital,
        record_type=record_type,
        payload_hash=payload_hash(payload),
        timestamp_ms=int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
        nonce=os.urandom(NONCE_SIZE) if nonce is None else nonce,
        client_key=signer.public,
        signature=bytes(SIGNATURE_SIZE),
    )
    problem = _header_problem(unsigned)
    if problem:
        raise LedgerError(problem)
    tx = dataclasses.replace(unsigned, signature=signer.sign(unsigned.header_bytes()))
    return TxEnvelope(tx=tx, payload=payload)


def check_tx(
    env: TxEnvelope, registry: ClientRegistry, *, max_payload: int = MAX_PAYLOAD_BYTES
) -> str | None:
    """None if ``env`` is a valid transaction from a registered client; else the reason.

    Deterministic (no clock): the same envelope gets the same answer on every replica. Cheap
    checks run first; the signature, the expensive one, last.
    """
    tx = env.tx
    problem = _header_problem(tx) or _payload_problem(env.payload, max_payload)
    if problem:
        return problem
    if payload_hash(env.payload) != tx.payload_hash:
        return "payload hash mismatch"
    registered = registry.hospital_of(tx.client_key)
    if registered is None:
        return f"unknown client key {tx.client_key.hex()}"
    if registered != tx.hospital:
        return f"client key not registered for hospital {tx.hospital!r}"
    if not verify(tx.client_key, tx.header_bytes(), tx.signature):
        return "bad signature"
    return None


def _string_problem(value: str, max_chars: int) -> str | None:
    if not value:
        return "is empty"
    if len(value) > max_chars:
        return f"is {len(value)} characters, limit {max_chars}"
    if not value.isprintable():
        # Ids end up in logs, JSON and terminals: no control characters or line breaks.
        return "contains non-printable characters"
    return None


def _header_problem(tx: Transaction) -> str | None:
    for name, max_chars in _STRING_FIELDS:
        value = getattr(tx, name)
        if type(value) is not str:
            return f"{name} must be a string"
        problem = _string_problem(value, max_chars)
        if problem:
            return f"{name} {problem}"
    for name, size in _BYTES_FIELDS:
        value = getattr(tx, name)
        if type(value) is not bytes or len(value) != size:
            return f"{name} must be {size} bytes"
    if type(tx.timestamp_ms) is not int or not 0 <= tx.timestamp_ms <= codec.MAX_UINT:
        return "timestamp_ms must be a non-negative 64-bit integer"
    return None


def _payload_problem(payload: object, max_payload: int) -> str | None:
    if type(payload) is not bytes:
        return "payload must be bytes"
    if len(payload) > max_payload:
        return f"payload is {len(payload)} bytes, limit {max_payload}"
    return None


def _tx_to_raw(env: TxEnvelope) -> tuple[object, ...]:
    return (TX_FORMAT, *env.tx.header_fields(), env.tx.signature, env.payload)


def _tx_from_raw(raw: object, what: str) -> TxEnvelope:
    # Fast path for well-formed input, i.e. nearly every tx a node decodes (admission,
    # pre-prepares, committed blocks): exactly the checked path's conditions, tested inline
    # without building an error text per field. Anything else takes the checked path, which
    # raises naming the first problem.
    if type(raw) is tuple and len(raw) == 11:
        fmt, rid, patient, hospital, rtype, p_hash, ts, nonce, key, sig, payload = raw
        if (
            type(fmt) is int
            and fmt == TX_FORMAT
            and type(rid) is str
            and len(rid) <= MAX_RECORD_ID_CHARS
            and type(patient) is str
            and len(patient) <= MAX_PATIENT_CHARS
            and type(hospital) is str
            and len(hospital) <= MAX_HOSPITAL_CHARS
            and type(rtype) is str
            and len(rtype) <= MAX_RECORD_TYPE_CHARS
            and type(p_hash) is bytes
            and len(p_hash) == HASH_SIZE
            and type(ts) is int
            and 0 <= ts <= codec.MAX_UINT
            and type(nonce) is bytes
            and len(nonce) == NONCE_SIZE
            and type(key) is bytes
            and len(key) == KEY_SIZE
            and type(sig) is bytes
            and len(sig) == SIGNATURE_SIZE
            and type(payload) is bytes
            and len(payload) <= HARD_MAX_PAYLOAD_BYTES
        ):
            tx = Transaction(rid, patient, hospital, rtype, p_hash, ts, nonce, key, sig)
            return TxEnvelope(tx, payload)
    return _tx_from_raw_checked(raw, what)


def _tx_from_raw_checked(raw: object, what: str) -> TxEnvelope:
    (
        fmt,
        record_id,
        patient,
        hospital,
        record_type,
        p_hash,
        ts,
        nonce,
        client_key,
        sig,
        payload,
    ) = codec.expect_array(raw, what, arity=11)
    if type(fmt) is not int or fmt != TX_FORMAT:
        raise CodecError(f"{what}: unknown transaction format")
    tx = Transaction(
        record_id=codec.expect_str(record_id, f"{what}.record_id", max_len=MAX_RECORD_ID_CHARS),
        patient=codec.expect_str(patient, f"{what}.patient", max_len=MAX_PATIENT_CHARS),
        hospital=codec.expect_str(hospital, f"{what}.hospital", max_len=MAX_HOSPITAL_CHARS),
        record_type=codec.expect_str(
            record_type, f"{what}.record_type", max_len=MAX_RECORD_TYPE_CHARS
        ),
        payload_hash=codec.expect_bytes(p_hash, f"{what}.payload_hash", size=HASH_SIZE),
        timestamp_ms=codec.expect_int(ts, f"{what}.timestamp_ms"),
        nonce=codec.expect_bytes(nonce, f"{what}.nonce", size=NONCE_SIZE),
        client_key=codec.expect_bytes(client_key, f"{what}.client_key", size=KEY_SIZE),
        signature=codec.expect_bytes(sig, f"{what}.signature", size=SIGNATURE_SIZE),
    )
    body = codec.expect_bytes(payload, f"{what}.payload", max_len=HARD_MAX_PAYLOAD_BYTES)
    return TxEnvelope(tx=tx, payload=body)


def encode_tx(env: TxEnvelope) -> bytes:
    return codec.pack(_tx_to_raw(env))


def decode_tx(data: object) -> TxEnvelope:
    """Strictly decode an encoded envelope; CodecError (only) on malformed input.

    Checks structure (types, sizes, string bounds), not validity: see :func:`check_tx`.
    """
    return _tx_from_raw(codec.unpack(data, max_bytes=MAX_TX_BYTES, what="tx"), "tx")


def tx_to_json(env: TxEnvelope, *, include_payload: bool = False) -> dict[str, Any]:
    tx = env.tx
    out: dict[str, Any] = {
        "tx_id": tx.tx_id.hex(),
        "record_id": tx.record_id,
        "patient": tx.patient,
        "hospital": tx.hospital,
        "record_type": tx.record_type,
        "payload_hash": tx.payload_hash.hex(),
        "payload_size": len(env.payload),
        "timestamp_ms": tx.timestamp_ms,
        "nonce": tx.nonce.hex(),
        "client_key": tx.client_key.hex(),
        "signature": tx.signature.hex(),
    }
    if include_payload:
        out["payload"] = env.payload.hex()
    return out


# ---------------------------------------------------------------------------------------------
# blocks


@dataclass(frozen=True, slots=True)
class Block:
    """A committed batch at ``height`` (== consensus seq) with its commit certificate."""

    height: int
    prev_hash: bytes
    block_hash: bytes
    merkle_root: bytes
    """Merkle root over the tx ids (not the payloads: see the module docstring)."""
    view: int
    """View where the batch was first proposed (the certificate's view may be later)."""
    proposer: int
    timestamp_ms: int
    txs: tuple[TxEnvelope, ...]
    commits: tuple[Commit, ...]

    @property
    def seq(self) -> int:
        return self.height

    @property
    def tx_ids(self) -> tuple[bytes, ...]:
        return tuple(env.tx_id for env in self.txs)

    @property
    def digest(self) -> bytes:
        """The batch digest the commits sign, from the header as stored (see verify_block)."""
        return batch_digest(
            self.view, self.proposer, self.timestamp_ms, self.merkle_root, len(self.txs)
        )

    @property
    def is_null(self) -> bool:
        return self.proposer == NO_PROPOSER


def block_from_committed(c: Committed) -> Block:
    """The block for a decision of the consensus core.

    Raises LedgerError if the batch's txs do not decode to the ids it names or the hashes do not
    match: the core only commits batches the application accepted, so this is a bug, not input.
    """
    cb = c.block
    batch = cb.batch
    if len(batch.tx_ids) != len(batch.txs):
        raise LedgerError(f"committed block {cb.seq}: tx ids and txs differ in number")
    txs: list[TxEnvelope] = []
    for i, (tx_id, raw) in enumerate(zip(batch.tx_ids, batch.txs, strict=True)):
        try:
            env = decode_tx(raw)
        except CodecError as e:
            raise LedgerError(f"committed block {cb.seq}: tx {i}: {e.reason}") from None
        if env.tx_id != tx_id:
            raise LedgerError(f"committed block {cb.seq}: tx {i} does not match its id")
        txs.append(env)
    digest = batch.digest()
    if chain_link(cb.seq, c.prev_hash, digest) != c.block_hash:
        raise LedgerError(f"committed block {cb.seq}: block hash does not match its contents")
    return Block(
        height=cb.seq,
        prev_hash=c.prev_hash,
        block_hash=c.block_hash,
        merkle_root=merkle_root(batch.tx_ids),
        view=batch.view,
        proposer=batch.proposer,
        timestamp_ms=batch.timestamp_ms,
        txs=tuple(txs),
        commits=cb.commits,
    )


def block_to_batch(block: Block) -> Batch:
    return Batch(
        view=block.view,
        proposer=block.proposer,
        timestamp_ms=block.timestamp_ms,
        tx_ids=block.tx_ids,
        txs=tuple(encode_tx(env) for env in block.txs),
    )


def block_to_certified(block: Block) -> CertifiedBlock:
    """The form state transfer sends (a FetchResponse entry)."""
    return CertifiedBlock(seq=block.height, batch=block_to_batch(block), commits=block.commits)


def encode_block(block: Block) -> bytes:
    return codec.pack(
        (
            BLOCK_FORMAT,
            block.height,
            block.prev_hash,
            block.block_hash,
            block.merkle_root,
            block.view,
            block.proposer,
            block.timestamp_ms,
            tuple(_tx_to_raw(env) for env in block.txs),
            tuple(codec.commit_to_raw(c) for c in block.commits),
        )
    )


def decode_block(data: object, *, max_bytes: int = MAX_BLOCK_BYTES) -> Block:
    """Strictly decode a stored or served block; CodecError (only) on malformed input.

    Checks structure, not validity: see :func:`verify_block`.
    """
    raw = codec.unpack(data, max_bytes=max_bytes, what="block")
    fmt, height, prev, bhash, root, view, proposer, ts, txs, commits = codec.expect_array(
        raw, "block", arity=10
    )
    if type(fmt) is not int or fmt != BLOCK_FORMAT:
        raise CodecError("block: unknown block format")
    tx_items = codec.expect_array(txs, "block.txs")
    return Block(
        height=codec.expect_int(height, "block.height", lo=1),
        prev_hash=codec.expect_bytes(prev, "block.prev_hash", size=HASH_SIZE),
        block_hash=codec.expect_bytes(bhash, "block.block_hash", size=HASH_SIZE),
        merkle_root=codec.expect_bytes(root, "block.merkle_root", size=HASH_SIZE),
        view=codec.expect_int(view, "block.view"),
        proposer=codec.expect_int(
            proposer, "block.proposer", lo=NO_PROPOSER, hi=codec.MAX_REPLICAS - 1
        ),
        timestamp_ms=codec.expect_int(ts, "block.timestamp_ms"),
        txs=tuple(_tx_from_raw(t, f"block.txs[{i}]") for i, t in enumerate(tx_items)),
        commits=codec.commits_from_raw(commits, "block.commits"),
    )


def block_to_json(block: Block, include_payload: bool = False) -> dict[str, Any]:
    """The HTTP API's view of a block: header, transactions and certificate (bytes as hex)."""
    return {
        **_header_json_fields(block, len(block.txs)),
        "txs": [tx_to_json(env, include_payload=include_payload) for env in block.txs],
        "certificate": certificate_to_json(block.commits),
    }


def certificate_to_json(commits: Sequence[Commit]) -> list[dict[str, Any]]:
    return [
        {
            "view": c.view,
            "seq": c.seq,
            "digest": c.digest.hex(),
            "replica": c.replica,
            "signature": c.signature.hex(),
        }
        for c in commits
    ]


def _header_json_fields(block: Block | BlockHeader, tx_count: int) -> dict[str, Any]:
    return {
        "height": block.height,
        "hash": block.block_hash.hex(),
        "prev_hash": block.prev_hash.hex(),
        "merkle_root": block.merkle_root.hex(),
        "digest": block.digest.hex(),
        "view": block.view,
        "proposer": block.proposer,
        "timestamp_ms": block.timestamp_ms,
        "tx_count": tx_count,
    }


# ---------------------------------------------------------------------------------------------
# block headers (a block without its transactions)


@dataclass(frozen=True, slots=True)
class BlockHeader:
    """A block without its transactions: what the light forms of ``GET /blocks`` serve and what
    the cross-audit compares. The block hash binds every field but the certificate, and the
    Merkle root binds the tx ids, so a header with a valid certificate stands for its block."""

    height: int
    prev_hash: bytes
    block_hash: bytes
    merkle_root: bytes
    view: int
    proposer: int
    timestamp_ms: int
    tx_count: int
    commits: tuple[Commit, ...]
    tx_ids: tuple[bytes, ...] | None = None
    """The block's tx ids in order, when asked for (None: not included)."""

    @property
    def digest(self) -> bytes:
        return batch_digest(
            self.view, self.proposer, self.timestamp_ms, self.merkle_root, self.tx_count
        )

    @property
    def is_null(self) -> bool:
        return self.proposer == NO_PROPOSER


def block_header(block: Block, *, with_tx_ids: bool = False) -> BlockHeader:
    return BlockHeader(
        height=block.height,
        prev_hash=block.prev_hash,
        block_hash=block.block_hash,
        merkle_root=block.merkle_root,
        view=block.view,
        proposer=block.proposer,
        timestamp_ms=block.timestamp_ms,
        tx_count=len(block.txs),
        commits=block.commits,
        tx_ids=block.tx_ids if with_tx_ids else None,
    )


def decode_block_header(
    data: object, *, with_tx_ids: bool = False, max_bytes: int = MAX_BLOCK_BYTES
) -> BlockHeader:
    """The header (and, with ``with_tx_ids``, the tx ids) of an encoded block, without building
    its transactions: a fraction of :func:`decode_block`'s cost. CodecError on malformed input.

    The header fields and the certificate are checked as strictly as by decode_block; each tx
    only for its shape (an array of the transaction layout). Use it on bytes already known to
    verify (the auditor's fingerprint of verified stored blocks): it does not validate txs.
    """
    raw = codec.unpack(data, max_bytes=max_bytes, what="block")
    fmt, height, prev, bhash, root, view, proposer, ts, txs, commits = codec.expect_array(
        raw, "block", arity=10
    )
    if type(fmt) is not int or fmt != BLOCK_FORMAT:
        raise CodecError("block: unknown block format")
    tx_items = codec.expect_array(txs, "block.txs")
    tx_ids: tuple[bytes, ...] | None = None
    if with_tx_ids:
        ids = []
        for i, item in enumerate(tx_items):
            fields = codec.expect_array(item, f"block.txs[{i}]", arity=11)
            ids.append(tx_id_of(fields[1:9]))
        tx_ids = tuple(ids)
    return BlockHeader(
        height=codec.expect_int(height, "block.height", lo=1),
        prev_hash=codec.expect_bytes(prev, "block.prev_hash", size=HASH_SIZE),
        block_hash=codec.expect_bytes(bhash, "block.block_hash", size=HASH_SIZE),
        merkle_root=codec.expect_bytes(root, "block.merkle_root", size=HASH_SIZE),
        view=codec.expect_int(view, "block.view"),
        proposer=codec.expect_int(
            proposer, "block.proposer", lo=NO_PROPOSER, hi=codec.MAX_REPLICAS - 1
        ),
        timestamp_ms=codec.expect_int(ts, "block.timestamp_ms"),
        tx_count=len(tx_items),
        commits=codec.commits_from_raw(commits, "block.commits"),
        tx_ids=tx_ids,
    )


def header_to_json(header: BlockHeader) -> dict[str, Any]:
    """The light view of a block: ``block_to_json`` without ``txs``; with ``tx_ids`` (hex) if
    the header carries them."""
    doc = _header_json_fields(header, header.tx_count)
    if header.tx_ids is not None:
        doc["tx_ids"] = [tx_id.hex() for tx_id in header.tx_ids]
    doc["certificate"] = certificate_to_json(header.commits)
    return doc


# ---------------------------------------------------------------------------------------------
# verification


def quorum_size(n: int) -> int:
    """ceil((n+f+1)/2) with f = (n-1)//3: any two quorums share an honest replica.

    For n = 3f+1 this is the familiar 2f+1.
    """
    if n < 1:
        raise ValueError(f"consortium size must be positive, got {n}")
    f = (n - 1) // 3
    return (n + f + 2) // 2


class VerifiedCommits:
    """Commit signatures already verified, so that each is checked once however many
    certificates repeat it (every holder of block h carries copies of the same deterministic
    Ed25519 commits). A bounded LRU of 32-byte keys, each the sha256 of the signer's public key,
    the signed bytes and the signature: a hit is only possible for the very same signature over
    the very same bytes by the very same key, so skipping it cannot change any verdict."""

    __slots__ = ("_capacity", "_keys", "hits", "misses")

    def __init__(self, capacity: int = 65_536) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self._capacity = capacity
        self._keys: OrderedDict[bytes, None] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(public: bytes, signing_bytes: bytes, signature: bytes) -> bytes:
        return hashlib.sha256(public + signature + signing_bytes).digest()

    def known(self, key: bytes) -> bool:
        if key in self._keys:
            self._keys.move_to_end(key)
            self.hits += 1
            return True
        self.misses += 1
        return False

    def add(self, key: bytes) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self._capacity:
            self._keys.popitem(last=False)

    def add_commits(self, commits: Iterable[Commit], consortium_publics: Sequence[bytes]) -> None:
        """Remember commits verified elsewhere (a certificate this node's consensus formed)."""
        for c in commits:
            if 0 <= c.replica < len(consortium_publics):
                self.add(self.key(consortium_publics[c.replica], c.signing_bytes(), c.signature))

    def __len__(self) -> int:
        return len(self._keys)


def verify_certificate(
    seq: int,
    digest: bytes,
    commits: Sequence[Commit],
    consortium_publics: Sequence[bytes],
    quorum: int,
    *,
    verified: VerifiedCommits | None = None,
) -> str | None:
    """None if ``commits`` certify (seq, digest): >= quorum valid commits, one view, distinct
    consortium members. A certificate with any bad commit in it is rejected as a whole: an
    honest node never stores one, so it can only come from tampering. Signatures found in
    ``verified`` are not checked again; those that verify are added to it."""
    if not commits:
        return "certificate is empty"
    if len(commits) < quorum:
        return f"certificate has {len(commits)} commits, quorum is {quorum}"
    view = commits[0].view
    seen: set[int] = set()
    for c in commits:
        if not 0 <= c.replica < len(consortium_publics):
            return f"commit from unknown replica {c.replica}"
        if c.replica in seen:
            return f"duplicate commit from replica {c.replica}"
        seen.add(c.replica)
        if c.seq != seq:
            return f"commit from replica {c.replica} is for seq {c.seq}, not {seq}"
        if c.digest != digest:
            return f"commit from replica {c.replica} is for another digest"
        if c.view != view:
            return f"commits are for different views ({view} and {c.view})"
    # Signatures last: they are the expensive part.
    for c in commits:
        public = consortium_publics[c.replica]
        signed = c.signing_bytes()
        key = b""
        if verified is not None:
            key = verified.key(public, signed, c.signature)
            if verified.known(key):
                continue
        if not verify(public, signed, c.signature):
            return f"bad commit signature from replica {c.replica}"
        if verified is not None:
            verified.add(key)
    return None


def verify_block(
    block: Block,
    prev_hash: bytes,
    consortium: Sequence[bytes],
    registry: ClientRegistry,
    *,
    max_payload: int = MAX_PAYLOAD_BYTES,
    verified_commits: VerifiedCommits | None = None,
) -> str | None:
    """None if ``block`` is a valid successor of ``prev_hash``; else the first problem found.

    Checks: the link to ``prev_hash``, the Merkle root recomputed from the txs, the block hash
    recomputed from the header, the commit certificate, and every transaction.
    """
    return verify_block_header(
        block, prev_hash, consortium, verified_commits=verified_commits
    ) or verify_txs(block, registry, max_payload=max_payload)


def verify_block_header(
    block: Block,
    prev_hash: bytes,
    consortium: Sequence[bytes],
    *,
    verified_commits: VerifiedCommits | None = None,
) -> str | None:
    """:func:`verify_block` but for the transactions' own checks (:func:`verify_txs`): the
    link, the Merkle root over the tx ids, the block hash and the certificate."""
    if block.prev_hash != prev_hash:
        return "prev_hash does not link to the previous block"
    if block.proposer != NO_PROPOSER and not 0 <= block.proposer < len(consortium):
        return f"proposer {block.proposer} is not a consortium member"
    if block.is_null and block.txs:
        return "null block carries transactions"
    tx_ids = block.tx_ids
    if len(set(tx_ids)) != len(tx_ids):
        return "duplicate tx id in block"
    if merkle_root(tx_ids) != block.merkle_root:
        return "merkle root does not match the transactions"
    digest = block.digest
    if chain_link(block.height, prev_hash, digest) != block.block_hash:
        return "block hash does not match the header"
    return verify_certificate(
        block.height,
        digest,
        block.commits,
        consortium,
        quorum_size(len(consortium)),
        verified=verified_commits,
    )


def verify_txs(
    block: Block,
    registry: ClientRegistry,
    *,
    max_payload: int = MAX_PAYLOAD_BYTES,
    start: int = 0,
    stop: int | None = None,
) -> str | None:
    """The first problem of the block's transactions ``start..stop`` (all by default): fields,
    payload hash, registered client, signature. Ranges let a caller spread one block's
    signature checks over several steps."""
    txs = block.txs
    for i in range(start, len(txs) if stop is None else min(stop, len(txs))):
        env = txs[i]
        problem = check_tx(env, registry, max_payload=max_payload)
        if problem:
            return f"tx {i} ({env.tx_id.hex()[:16]}): {problem}"
    return None


@dataclass(frozen=True, slots=True)
class ChainReport:
    ok: bool
    height: int
    """Height of the last block that verified (0 if none)."""
    head_hash: bytes
    """Hash of that block (GENESIS_HASH if none)."""
    first_bad_height: int | None
    reason: str | None
    duplicate_txs: int = 0
    """Transactions repeated in a later block: no-ops, executed only where first committed."""


def verify_chain(
    blocks: Iterable[Block],
    consortium: Sequence[bytes],
    registry: ClientRegistry,
    *,
    max_payload: int = MAX_PAYLOAD_BYTES,
) -> ChainReport:
    """Verify a chain from genesis: contiguous heights from 1, hash links, every block. Stops at
    the first bad block.

    A transaction id may reappear in a later certified block: PBFT can legitimately re-issue,
    in a new view, a batch prepared in an old one after its transactions were committed
    elsewhere. As in PBFT (and Hyperledger Fabric's duplicate-txid rule), such a repeat is a
    no-op: the transaction counts as committed once, at its first height; repeats are counted.

    Keeps one 32-byte id per transaction in memory (about 100 MB per million txs).
    """
    height, head = 0, GENESIS_HASH
    seen: set[bytes] = set()
    repeats = 0
    for block in blocks:
        problem = _chain_step_problem(block, height, head, consortium, registry, max_payload)
        if problem:
            return ChainReport(False, height, head, height + 1, problem, repeats)
        repeats += sum(1 for t in block.tx_ids if t in seen)
        seen.update(block.tx_ids)
        height, head = block.height, block.block_hash
    return ChainReport(True, height, head, None, None, repeats)


def _chain_step_problem(
    block: Block,
    height: int,
    head: bytes,
    consortium: Sequence[bytes],
    registry: ClientRegistry,
    max_payload: int,
) -> str | None:
    if block.height != height + 1:
        return f"expected height {height + 1}, found {block.height}"
    return verify_block(block, head, consortium, registry, max_payload=max_payload)


class BlockJsonError(ValueError):
    """A served JSON block is malformed; the message names the field."""


def block_from_json(doc: object) -> Block:
    """Inverse of ``block_to_json(block, include_payload=True)``. Strict: every field present,
    of the right type and size, served tx ids matching the transactions; anything else raises
    BlockJsonError. Validity (signatures, certificate, links) is ``verify_chain``'s job."""
    if not isinstance(doc, Mapping):
        raise BlockJsonError("block must be a JSON object")
    try:
        txs = tuple(_tx_from_json(t, i) for i, t in enumerate(_json_list(doc, "txs")))
        commits = tuple(_commit_from_json(c) for c in _json_list(doc, "certificate"))
        return Block(
            height=_json_int(doc, "height"),
            prev_hash=_json_hex(doc, "prev_hash", HASH_SIZE),
            block_hash=_json_hex(doc, "hash", HASH_SIZE),
            merkle_root=_json_hex(doc, "merkle_root", HASH_SIZE),
            view=_json_int(doc, "view"),
            proposer=_json_int(doc, "proposer", lo=NO_PROPOSER),
            timestamp_ms=_json_int(doc, "timestamp_ms"),
            txs=txs,
            commits=commits,
        )
    except KeyError as e:
        raise BlockJsonError(f"missing field {e}") from None


def _tx_from_json(doc: object, i: int) -> TxEnvelope:
    if not isinstance(doc, Mapping):
        raise BlockJsonError(f"txs[{i}] must be an object")
    if not isinstance(doc.get("payload"), str):
        raise BlockJsonError(f"txs[{i}] served without its payload (ask with payload=1)")
    tx = Transaction(
        record_id=_json_str(doc, "record_id"),
        patient=_json_str(doc, "patient"),
        hospital=_json_str(doc, "hospital"),
        record_type=_json_str(doc, "record_type"),
        payload_hash=_json_hex(doc, "payload_hash", HASH_SIZE),
        timestamp_ms=_json_int(doc, "timestamp_ms"),
        nonce=_json_hex(doc, "nonce", NONCE_SIZE),
        client_key=_json_hex(doc, "client_key", KEY_SIZE),
        signature=_json_hex(doc, "signature", SIGNATURE_SIZE),
    )
    env = TxEnvelope(tx=tx, payload=_json_hex(doc, "payload"))
    served_id = doc.get("tx_id")
    if served_id is not None and served_id != env.tx_id.hex():
        raise BlockJsonError(f"txs[{i}]: served tx_id does not match the transaction")
    return env


def _commit_from_json(doc: object) -> Commit:
    if not isinstance(doc, Mapping):
        raise BlockJsonError("certificate entries must be objects")
    return Commit(
        view=_json_int(doc, "view"),
        seq=_json_int(doc, "seq"),
        digest=_json_hex(doc, "digest", HASH_SIZE),
        replica=_json_int(doc, "replica"),
        signature=_json_hex(doc, "signature", SIGNATURE_SIZE),
    )


def _json_list(doc: Mapping[str, Any], key: str) -> list[Any]:
    value = doc[key]
    if not isinstance(value, list):
        raise BlockJsonError(f"{key} must be a list")
    return value


def _json_int(doc: Mapping[str, Any], key: str, *, lo: int = 0) -> int:
    value = doc[key]
    if type(value) is not int or value < lo:
        raise BlockJsonError(f"{key} must be an integer >= {lo}, got {value!r}")
    return value


def _json_str(doc: Mapping[str, Any], key: str) -> str:
    value = doc[key]
    if not isinstance(value, str):
        raise BlockJsonError(f"{key} must be a string")
    return value


def _json_hex(doc: Mapping[str, Any], key: str, size: int | None = None) -> bytes:
    try:
        raw = bytes.fromhex(_json_str(doc, key))
    except ValueError:
        raise BlockJsonError(f"{key} is not hex") from None
    if size is not None and len(raw) != size:
        raise BlockJsonError(f"{key} must be {size} bytes, got {len(raw)}")
    return raw


# ---------------------------------------------------------------------------------------------
# consensus Application


class CommittedIndex(Protocol):
    def committed_among(self, tx_ids: Sequence[bytes]) -> set[bytes]: ...


class LedgerApp:
    """``consensus.events.Application`` over a ledger store and the client registry.

    A transaction is verified once at admission (:meth:`admit`); when it comes back inside a
    pre-prepare it is found in a bounded LRU cache of verified txs and not verified again. The
    cache is keyed by tx id and remembers a hash of the exact bytes verified, so a byzantine
    primary cannot pass a known tx id with a different payload or signature through the cache.
    Cached or not, the answer is the same: the cache only saves work, so check_txs stays
    deterministic across replicas.
    """

    def __init__(
        self,
        store: CommittedIndex,
        registry: ClientRegistry,
        *,
        max_payload: int = MAX_PAYLOAD_BYTES,
        cache_size: int = 100_000,
    ) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be positive")
        self._store = store
        self._registry = registry
        self._max_payload = max_payload
        self._cache_size = cache_size
        self._verified: OrderedDict[bytes, bytes] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    def registry(self) -> ClientRegistry:
        return self._registry

    def admit(self, raw: bytes) -> TxEnvelope:
        """Decode and fully check a client's encoded tx; raises LedgerError(reason)."""
        try:
            env = decode_tx(raw)
        except CodecError as e:
            raise LedgerError(e.reason) from None
        problem = check_tx(env, self._registry, max_payload=self._max_payload)
        if problem:
            raise LedgerError(problem)
        self._remember(env.tx_id, raw)
        return env

    def check_txs(self, tx_ids: tuple[bytes, ...], txs: tuple[bytes, ...]) -> str | None:
        if len(tx_ids) != len(txs):
            return f"{len(tx_ids)} tx ids but {len(txs)} txs"
        if len(set(tx_ids)) != len(tx_ids):
            return "duplicate tx id in batch"
        for i, (tx_id, raw) in enumerate(zip(tx_ids, txs, strict=True)):
            problem = self._check_one(tx_id, raw)
            if problem:
                return f"tx {i} ({tx_id.hex()[:16]}): {problem}"
        return None

    def committed_among(self, tx_ids: Sequence[bytes]) -> set[bytes]:
        return self._store.committed_among(tx_ids)

    def _check_one(self, tx_id: bytes, raw: bytes) -> str | None:
        fingerprint = hashlib.sha256(raw).digest()
        if self._verified.get(tx_id) == fingerprint:
            self._verified.move_to_end(tx_id)
            self.cache_hits += 1
            return None
        self.cache_misses += 1
        try:
            env = decode_tx(raw)
        except CodecError as e:
            return e.reason
        if env.tx_id != tx_id:
            return "tx does not match its id"
        problem = check_tx(env, self._registry, max_payload=self._max_payload)
        if problem:
            return problem
        self._store_fingerprint(tx_id, fingerprint)
        return None

    def _remember(self, tx_id: bytes, raw: bytes) -> None:
        self._store_fingerprint(tx_id, hashlib.sha256(raw).digest())

    def _store_fingerprint(self, tx_id: bytes, fingerprint: bytes) -> None:
        self._verified[tx_id] = fingerprint
        self._verified.move_to_end(tx_id)
        while len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
