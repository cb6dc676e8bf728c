"""Transactions (node.ledger.tx): golden bytes, building, checking, binary form, registry."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from consensus.hashing import h
from node.codec import CodecError
from node.crypto import generate_keypair, sign
from node.ledger import (
    MAX_PAYLOAD_BYTES,
    TX_ID_DOMAIN,
    ClientRegistry,
    LedgerError,
    TxEnvelope,
    check_tx,
    decode_tx,
    encode_tx,
    make_transaction,
)
from tests.unit.helpers_ledger import (
    CLIENT_KEYS,
    HOSPITALS,
    REGISTRY,
    make_tx,
)

# -- transactions -------------------------------------------------------------------------------


def test_golden_transaction() -> None:
    env = make_tx(0)
    assert env.tx.header_bytes().hex() == (
        "6d6564636861696e2f74780098a77265632d302d30a970617469656e742d30aa686f73706974616c2d30"
        "aa6c61622d726573756c74c42057f51072ba87dd2da9361276431191aae1f78ab19a4da13374b9899df3"
        "3ba5f9cf0000018bcfe56800c41000000000000000000000000000000000c4202bc2800b3316e009209f"
        "fd757dab19ccf0ae84bc7ae90654e1e81712d270f653"
    )
    assert env.tx_id.hex() == "6f2a843fc7c3b686a2df7963f45b131887cd70da1d86637b9e50823845fcf560"


def test_tx_id_is_computed_once_and_excluded_from_equality() -> None:
    env = make_tx(0)
    tx = env.tx
    first = tx.tx_id
    assert first == h(TX_ID_DOMAIN, tx.header_bytes())
    assert tx.tx_id is first  # memoised, not recomputed
    fresh = decode_tx(encode_tx(env)).tx
    assert fresh == tx and hash(fresh) == hash(tx) and "_tx_id" not in repr(tx)
    # replace() gives a new transaction whose id is computed from its own fields.
    other = dataclasses.replace(tx, patient="patient-other")
    assert other.tx_id != first and other.tx_id == h(TX_ID_DOMAIN, other.header_bytes())
    with pytest.raises(dataclasses.FrozenInstanceError):
        tx.patient = "x"  # type: ignore[misc]


def test_make_transaction_is_valid_and_covers_payload_hash() -> None:
    env = make_tx(1, payload=b"lab values")
    assert check_tx(env, REGISTRY) is None
    assert env.tx.payload_hash == hashlib.sha256(b"lab values").digest()
    assert env.tx.client_key == CLIENT_KEYS[0][1]
    # id and signature cover the header only: the payload can be erased without changing them.
    erased = dataclasses.replace(env, payload=b"")
    assert erased.tx_id == env.tx_id
    assert check_tx(erased, REGISTRY) == "payload hash mismatch"


def test_make_transaction_defaults_are_fresh() -> None:
    secret = CLIENT_KEYS[1][0]
    a = make_transaction(secret, HOSPITALS[1], "p", "note", b"x")
    b = make_transaction(secret, HOSPITALS[1], "p", "note", b"x")
    assert a.tx_id != b.tx_id
    assert a.tx.record_id != b.tx.record_id and a.tx.nonce != b.tx.nonce
    assert check_tx(a, REGISTRY) is None and check_tx(b, REGISTRY) is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"record_id": "r" * 129}, "record_id is 129 characters, limit 128"),
        ({"patient": ""}, "patient is empty"),
        ({"hospital": "h" * 65}, "hospital is 65 characters"),
        ({"record_type": "a\nb"}, "record_type contains non-printable"),
        ({"nonce": b"short"}, "nonce must be 16 bytes"),
        ({"timestamp_ms": -1}, "timestamp_ms"),
        ({"payload": b"x" * (MAX_PAYLOAD_BYTES + 1)}, "payload is 65537 bytes"),
        ({"payload": "text"}, "payload must be bytes"),
    ],
)
def test_make_transaction_rejects_bad_fields(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "hospital": HOSPITALS[0],
        "patient": "p1",
        "record_type": "note",
        "payload": b"x",
    }
    args.update(kwargs)
    with pytest.raises(LedgerError, match=match):
        make_transaction(CLIENT_KEYS[0][0], **args)  # type: ignore[arg-type]


def _resign(env: TxEnvelope, secret: bytes, **changes: object) -> TxEnvelope:
    tx = dataclasses.replace(env.tx, **changes)  # type: ignore[arg-type]
    tx = dataclasses.replace(tx, signature=sign(secret, tx.header_bytes()))
    return TxEnvelope(tx=tx, payload=env.payload)


def test_check_tx_reasons() -> None:
    env = make_tx(2)
    stranger_secret, stranger_public = generate_keypair(bytes([200]) * 32)
    tx = env.tx
    cases = {
        "bad signature": TxEnvelope(
            dataclasses.replace(tx, signature=bytes([tx.signature[0] ^ 1]) + tx.signature[1:]),
            env.payload,
        ),
        "payload hash mismatch": TxEnvelope(tx, env.payload + b"!"),
        f"unknown client key {stranger_public.hex()}": _resign(
            env, stranger_secret, client_key=stranger_public
        ),
        "client key not registered for hospital 'hospital-1'": _resign(
            env, CLIENT_KEYS[0][0], hospital="hospital-1"
        ),
        "patient is 129 characters, limit 128": _resign(env, CLIENT_KEYS[0][0], patient="p" * 129),
        "signature must be 64 bytes": TxEnvelope(dataclasses.replace(tx, signature=b""), b""),
        f"payload is {len(env.payload)} bytes, limit 10": env,
    }
    for reason, bad in cases.items():
        limit = 10 if reason.startswith("payload is") else MAX_PAYLOAD_BYTES
        assert check_tx(bad, REGISTRY, max_payload=limit) == reason
    # A tx signed over a different header (signature valid for the old one) fails.
    moved = TxEnvelope(dataclasses.replace(tx, patient="someone-else"), env.payload)
    assert check_tx(moved, REGISTRY) == "bad signature"


def test_encode_decode_tx_round_trip() -> None:
    env = make_tx(3, payload=bytes(range(256)))
    data = encode_tx(env)
    assert decode_tx(data) == env
    assert encode_tx(decode_tx(data)) == data


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda raw: raw[:-1], "expected 11 elements"),
        (lambda raw: [2, *raw[1:]], "unknown transaction format"),
        (lambda raw: [True, *raw[1:]], "unknown transaction format"),
        (lambda raw: [*raw[:1], b"bytes-not-str", *raw[2:]], "tx.record_id: expected string"),
        (lambda raw: [*raw[:2], "p" * 129, *raw[3:]], "tx.patient: 129 characters"),
        (lambda raw: [*raw[:5], raw[5][:31], *raw[6:]], "tx.payload_hash: expected 32 bytes"),
        (lambda raw: [*raw[:6], -1, *raw[7:]], r"tx.timestamp_ms: -1 out of range"),
        (lambda raw: [*raw[:7], raw[7].hex(), *raw[8:]], "tx.nonce: expected bytes, got string"),
        (lambda raw: [*raw[:10], "payload"], "tx.payload: expected bytes"),
        # Every field's every condition (the decoder's fast path tests them all inline).
        (lambda raw: [*raw[:3], "h" * 65, *raw[4:]], "tx.hospital: 65 characters"),
        (lambda raw: [*raw[:3], 7, *raw[4:]], "tx.hospital: expected string"),
        (lambda raw: [*raw[:4], "t" * 65, *raw[5:]], "tx.record_type: 65 characters"),
        (lambda raw: [*raw[:4], None, *raw[5:]], "tx.record_type: expected string"),
        (lambda raw: [*raw[:1], "r" * 129, *raw[2:]], "tx.record_id: 129 characters"),
        (lambda raw: [*raw[:2], b"p", *raw[3:]], "tx.patient: expected string"),
        (lambda raw: [*raw[:5], raw[5].hex(), *raw[6:]], "tx.payload_hash: expected bytes"),
        (lambda raw: [*raw[:6], 1 << 63, *raw[7:]], r"tx.timestamp_ms: \d+ out of range"),
        (lambda raw: [*raw[:6], True, *raw[7:]], "tx.timestamp_ms: expected integer"),
        (lambda raw: [*raw[:6], 1.5, *raw[7:]], "tx.timestamp_ms: expected integer"),
        (lambda raw: [*raw[:7], raw[7] + b"x", *raw[8:]], "tx.nonce: expected 16 bytes"),
        (lambda raw: [*raw[:8], raw[8][:31], *raw[9:]], "tx.client_key: expected 32 bytes"),
        (lambda raw: [*raw[:8], "k", *raw[9:]], "tx.client_key: expected bytes"),
        (lambda raw: [*raw[:9], raw[9] + b"s", raw[10]], "tx.signature: expected 64 bytes"),
        (lambda raw: [*raw[:9], 64, raw[10]], "tx.signature: expected bytes"),
        (lambda raw: [*raw, b"extra"], "expected 11 elements"),
    ],
)
def test_decode_tx_rejects(mutate: object, match: str) -> None:
    import msgpack

    raw = msgpack.unpackb(encode_tx(make_tx(4)), use_list=True)
    data = msgpack.packb(mutate(raw), use_bin_type=True)  # type: ignore[operator]
    with pytest.raises(CodecError, match=match):
        decode_tx(data)


def test_decode_tx_garbage() -> None:
    for data in (b"", b"\xc1", b"\x90", encode_tx(make_tx(5)) + b"\x00", "str"):
        with pytest.raises(CodecError):
            decode_tx(data)


def test_client_registry() -> None:
    _, pub = CLIENT_KEYS[0]
    reg = ClientRegistry.from_hex([("hospital-0", pub.hex())])
    assert reg.hospital_of(pub) == "hospital-0" and pub in reg and len(reg) == 1
    assert reg.hospital_of(bytes(32)) is None
    with pytest.raises(ValueError, match="registered for both"):
        ClientRegistry([(pub, "a"), (pub, "b")])
    with pytest.raises(ValueError, match="32 bytes"):
        ClientRegistry({b"short": "a"})
    with pytest.raises(ValueError, match="invalid hospital"):
        ClientRegistry({pub: ""})
    with pytest.raises(ValueError, match="hex"):
        ClientRegistry.from_hex([("a", "nothex")])


def test_an_envelope_is_packed_once() -> None:
    env = make_tx(5)
    raw = encode_tx(env)
    assert encode_tx(env) is raw
    decoded = decode_tx(raw)
    assert decoded == env and hash(decoded) == hash(env) and repr(decoded) == repr(env)
    assert encode_tx(decoded) == raw
    changed = dataclasses.replace(env, payload=b"other")
    assert encode_tx(changed) != raw and decode_tx(encode_tx(changed)) == changed
