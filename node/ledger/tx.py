"""Transactions: the signed header, the envelope with its payload, the client registry.

A transaction is a signed header about one patient record plus the record's payload beside it.
The header carries ``sha256(payload)``; the signature, the tx id and the block's Merkle leaf all
cover the header only. The payload can therefore later be encrypted, held only by entitled
hospitals, or erased, while every signature, root, certificate and hash link still verifies.
All payload handling lives in this module (the TxEnvelope type and the functions that build,
encode, decode and check it) so that payload encryption arrives as a local change.

Forms: the binary one (msgpack, :func:`encode_tx` / :func:`decode_tx`, also inside an encoded
block) and the JSON one of the HTTP API (:func:`tx_to_json` / :func:`parse_tx_doc`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from consensus.hashing import canonical, h
from node import codec
from node.codec import CodecError
from node.crypto import Signer, public_key_from_hex, verify
from node.ledger.jsonform import (
    BlockJsonError,
    hex_bytes,
    json_field,
    json_hex,
    json_int,
    json_object,
    json_str,
)

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

TX_FORMAT: Final = 1
"""Leading element of an encoded tx, so a future layout (encrypted payloads) can coexist."""

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
    _encoded: bytes | None = field(default=None, init=False, repr=False, compare=False)
    """Memo of :func:`encode_tx`: a tx encoded at admission is not packed again for its block."""

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


def tx_to_raw(env: TxEnvelope) -> tuple[object, ...]:
    return (TX_FORMAT, *env.tx.header_fields(), env.tx.signature, env.payload)


def tx_from_raw(raw: object, what: str) -> TxEnvelope:
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
    """The canonical encoding of ``env``, packed once per envelope (memoised: like the tx id it
    is a pure function of the frozen fields, and dataclasses.replace() resets it)."""
    cached = env._encoded
    if cached is None:
        cached = codec.pack(tx_to_raw(env))
        object.__setattr__(env, "_encoded", cached)
    return cached


def decode_tx(data: object) -> TxEnvelope:
    """Strictly decode an encoded envelope; CodecError (only) on malformed input.

    Checks structure (types, sizes, string bounds), not validity: see :func:`check_tx`.
    """
    return tx_from_raw(codec.unpack(data, max_bytes=MAX_TX_BYTES, what="tx"), "tx")


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
class TxDoc:
    """A transaction in its JSON form, parsed for structure only: nothing in it is checked
    against anything (the claimed id against the header, the payload against its hash)."""

    tx: Transaction
    claimed_id: bytes
    """The ``tx_id`` the document states."""
    payload: bytes | None
    """None: served without it (the light form, or an exhibit with payloads stripped)."""


def parse_tx_doc(doc: object, what: str) -> TxDoc:
    """Strictly parse ``tx_to_json`` output (with or without the payload); BlockJsonError
    naming the first bad field (``what`` is its path, e.g. ``block.txs[3]``). The bounds are
    the binary decoder's; the string fields must also be printable, as check_tx demands."""
    d = json_object(doc, what)
    tx = Transaction(
        record_id=json_str(d, "record_id", what, MAX_RECORD_ID_CHARS),
        patient=json_str(d, "patient", what, MAX_PATIENT_CHARS),
        hospital=json_str(d, "hospital", what, MAX_HOSPITAL_CHARS),
        record_type=json_str(d, "record_type", what, MAX_RECORD_TYPE_CHARS),
        payload_hash=json_hex(d, "payload_hash", what, HASH_SIZE),
        timestamp_ms=json_int(d, "timestamp_ms", what),
        nonce=json_hex(d, "nonce", what, NONCE_SIZE),
        client_key=json_hex(d, "client_key", what, KEY_SIZE),
        signature=json_hex(d, "signature", what, SIGNATURE_SIZE),
    )
    claimed_id = json_hex(d, "tx_id", what, HASH_SIZE)
    payload: bytes | None = None
    if d.get("payload") is not None:
        text = json_field(d, "payload", what)
        if type(text) is not str or len(text) % 2:
            raise BlockJsonError(f"{what}.payload: expected hex")
        if len(text) > 2 * HARD_MAX_PAYLOAD_BYTES:
            raise BlockJsonError(
                f"{what}.payload: {len(text) // 2} bytes, limit {HARD_MAX_PAYLOAD_BYTES}"
            )
        payload = hex_bytes(text, f"{what}.payload")
    return TxDoc(tx, claimed_id, payload)
