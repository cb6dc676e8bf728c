from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence

import pytest

from consensus.hashing import GENESIS_HASH, chain_link, h, merkle_root
from consensus.messages import NULL_BATCH, Commit
from node.codec import CodecError
from node.crypto import generate_keypair, sign
from node.ledger import (
    MAX_PAYLOAD_BYTES,
    TX_ID_DOMAIN,
    Block,
    ClientRegistry,
    LedgerApp,
    LedgerError,
    TxEnvelope,
    VerifiedCommits,
    block_from_committed,
    block_header,
    block_to_certified,
    block_to_json,
    check_tx,
    decode_block,
    decode_block_header,
    decode_tx,
    encode_block,
    encode_tx,
    header_to_json,
    make_transaction,
    quorum_size,
    verify_block,
    verify_block_header,
    verify_certificate,
    verify_chain,
    verify_txs,
)
from tests.unit.helpers_ledger import (
    CLIENT_KEYS,
    CONSORTIUM,
    HOSPITALS,
    QUORUM,
    REGISTRY,
    REPLICA_KEYS,
    make_chain,
    make_committed,
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


def test_golden_chain_head() -> None:
    head = make_chain(3)[-1].block_hash
    assert head.hex() == "52f16233d3bead6007542e1c5dc3066b74c39729d8380975b15c77697da13731"


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


# -- blocks -------------------------------------------------------------------------------------


def test_block_from_committed() -> None:
    txs = [make_tx(10), make_tx(11, client=1)]
    c = make_committed(1, GENESIS_HASH, txs, view=2, proposer=2, commit_view=3)
    block = block_from_committed(c)
    batch = c.block.batch
    assert block.height == block.seq == 1
    assert block.view == 2 and block.proposer == 2 and block.timestamp_ms == batch.timestamp_ms
    assert block.txs == tuple(txs)
    assert block.tx_ids == batch.tx_ids
    assert block.merkle_root == merkle_root(batch.tx_ids)
    assert block.digest == batch.digest()
    assert block.block_hash == c.block_hash == chain_link(1, GENESIS_HASH, batch.digest())
    assert block.commits == c.block.commits and {x.view for x in block.commits} == {3}
    assert block_to_certified(block) == c.block
    assert verify_block(block, GENESIS_HASH, CONSORTIUM, REGISTRY) is None


def test_null_batch_gives_empty_block() -> None:
    block = block_from_committed(make_committed(1, GENESIS_HASH, None))
    assert block.is_null and block.txs == () and block.digest == NULL_BATCH.digest()
    assert block_to_certified(block).batch == NULL_BATCH
    assert decode_block(encode_block(block)) == block
    assert verify_block(block, GENESIS_HASH, CONSORTIUM, REGISTRY) is None


def test_block_from_committed_refuses_inconsistent_input() -> None:
    c = make_committed(1, GENESIS_HASH, [make_tx(12)])
    with pytest.raises(LedgerError, match="block hash"):
        block_from_committed(dataclasses.replace(c, block_hash=bytes(32)))
    wrong_ids = dataclasses.replace(
        c.block, batch=dataclasses.replace(c.block.batch, tx_ids=(bytes(32),))
    )
    with pytest.raises(LedgerError, match="does not match its id"):
        block_from_committed(dataclasses.replace(c, block=wrong_ids))
    garbage = dataclasses.replace(c.block, batch=dataclasses.replace(c.block.batch, txs=(b"x",)))
    with pytest.raises(LedgerError, match="tx 0"):
        block_from_committed(dataclasses.replace(c, block=garbage))


def test_encode_decode_block_round_trip() -> None:
    for block in make_chain(4, null_every=2):
        data = encode_block(block)
        assert decode_block(data) == block
        assert encode_block(decode_block(data)) == data


def test_block_to_json() -> None:
    block = make_chain(1)[0]
    doc = block_to_json(block)
    json.dumps(doc)  # serialisable
    assert doc["height"] == 1 and doc["hash"] == block.block_hash.hex()
    assert doc["prev_hash"] == GENESIS_HASH.hex() and doc["tx_count"] == 2
    assert doc["txs"][0]["tx_id"] == block.txs[0].tx_id.hex()
    assert doc["txs"][0]["payload_size"] == len(block.txs[0].payload)
    assert "payload" not in doc["txs"][0]
    assert [c["replica"] for c in doc["certificate"]] == [0, 1, 2]
    with_payload = block_to_json(block, include_payload=True)
    assert bytes.fromhex(with_payload["txs"][1]["payload"]) == block.txs[1].payload


def test_block_headers_decode_without_the_transactions() -> None:
    for block in make_chain(4, null_every=2):
        data = encode_block(block)
        assert decode_block_header(data) == block_header(block)
        with_ids = decode_block_header(data, with_tx_ids=True)
        assert with_ids == block_header(block, with_tx_ids=True)
        assert with_ids.tx_ids == block.tx_ids and with_ids.digest == block.digest
        doc = header_to_json(with_ids)
        assert doc["tx_ids"] == [t.hex() for t in block.tx_ids]
        full = block_to_json(block)
        assert {k: v for k, v in doc.items() if k != "tx_ids"} == {
            k: v for k, v in full.items() if k != "txs"
        }
        assert "tx_ids" not in header_to_json(block_header(block))
    with pytest.raises(CodecError):
        decode_block_header(b"\xc1")
    height_zero = bytearray(encode_block(make_chain(1)[0]))
    assert height_zero[:3] == b"\x9a\x01\x01"  # array of 10: format 1, height 1
    height_zero[2] = 0
    with pytest.raises(CodecError, match=r"block\.height"):
        decode_block_header(bytes(height_zero))


# -- certificates -------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "q"), [(1, 1), (4, 3), (5, 4), (6, 4), (7, 5), (10, 7), (13, 9)])
def test_quorum_size(n: int, q: int) -> None:
    assert quorum_size(n) == q


def _commit(replica: int, *, seq: int = 1, digest: bytes = b"d" * 32, view: int = 0) -> Commit:
    unsigned = Commit(view=view, seq=seq, digest=digest, replica=replica)
    sig = sign(REPLICA_KEYS[replica][0], unsigned.signing_bytes())
    return dataclasses.replace(unsigned, signature=sig)


def test_verify_certificate() -> None:
    d = b"d" * 32
    good = (_commit(0), _commit(1), _commit(3))
    assert verify_certificate(1, d, good, CONSORTIUM, QUORUM) is None
    assert verify_certificate(1, d, (*good, _commit(2)), CONSORTIUM, QUORUM) is None
    bad_sig = dataclasses.replace(_commit(2), signature=bytes(64))
    cases: list[tuple[tuple[Commit, ...], str]] = [
        ((), "certificate is empty"),
        (good[:2], "certificate has 2 commits, quorum is 3"),
        ((_commit(0), _commit(1), _commit(1)), "duplicate commit from replica 1"),
        ((_commit(0), _commit(1), dataclasses.replace(_commit(2), replica=7)), "unknown replica 7"),
        ((_commit(0), _commit(1), _commit(2, seq=2)), "is for seq 2, not 1"),
        ((_commit(0), _commit(1), _commit(2, digest=b"e" * 32)), "another digest"),
        ((_commit(0), _commit(1), _commit(2, view=1)), "different views"),
        ((_commit(0), _commit(1), bad_sig), "bad commit signature from replica 2"),
        # A commit signed by replica 2 but claiming to be replica 3.
        ((_commit(0), _commit(1), dataclasses.replace(_commit(2), replica=3)), "signature"),
    ]
    for commits, reason in cases:
        problem = verify_certificate(1, d, commits, CONSORTIUM, QUORUM)
        assert problem is not None and reason in problem, (reason, problem)


def test_verified_commits_are_remembered_bounded_and_bound_to_the_signature() -> None:
    d = b"d" * 32
    good = (_commit(0), _commit(1), _commit(3))
    verified = VerifiedCommits(capacity=4)
    assert verify_certificate(1, d, good, CONSORTIUM, QUORUM, verified=verified) is None
    assert (verified.misses, verified.hits, len(verified)) == (3, 0, 3)
    assert verify_certificate(1, d, good, CONSORTIUM, QUORUM, verified=verified) is None
    assert verified.hits == 3
    forged = dataclasses.replace(_commit(2), signature=bytes(64))
    problem = verify_certificate(
        1, d, (good[0], good[1], forged), CONSORTIUM, QUORUM, verified=verified
    )
    assert problem == "bad commit signature from replica 2"
    assert len(verified) == 3  # a failed signature is never remembered
    # The same commit presented as another replica's is not a hit.
    relabelled = dataclasses.replace(_commit(0), replica=2)
    assert (
        verify_certificate(
            1, d, (good[0], good[1], relabelled), CONSORTIUM, QUORUM, verified=verified
        )
        == "bad commit signature from replica 2"
    )
    verified.add_commits([_commit(2), _commit(0, seq=2)], CONSORTIUM)
    assert len(verified) == 4  # bounded: the least recently used went
    with pytest.raises(ValueError, match="capacity"):
        VerifiedCommits(0)


def test_verify_block_in_parts_agrees_with_verify_block() -> None:
    txs = [make_tx(40 + i, client=i % 2) for i in range(5)]
    block = block_from_committed(make_committed(1, GENESIS_HASH, txs))
    assert verify_block_header(block, GENESIS_HASH, CONSORTIUM) is None
    assert verify_txs(block, REGISTRY) is None
    bad = TxEnvelope(tx=dataclasses.replace(txs[3].tx, signature=bytes(64)), payload=b"x")
    broken = dataclasses.replace(block, txs=(*block.txs[:3], bad, *block.txs[4:]))
    whole = verify_block(broken, GENESIS_HASH, CONSORTIUM, REGISTRY)
    assert whole is not None and whole.startswith("tx 3")
    assert verify_txs(broken, REGISTRY, start=0, stop=3) is None
    assert verify_txs(broken, REGISTRY, start=3, stop=4) == whole
    assert verify_txs(broken, REGISTRY, start=4) is None


# -- verify_block / verify_chain ----------------------------------------------------------------


def test_verify_block_reasons() -> None:
    txs = [make_tx(20), make_tx(21, client=1)]
    block = block_from_committed(make_committed(1, GENESIS_HASH, txs))

    def check(b: Block, prev: bytes = GENESIS_HASH) -> str | None:
        return verify_block(b, prev, CONSORTIUM, REGISTRY)

    assert check(block) is None
    assert check(block, prev=bytes(32)) == "prev_hash does not link to the previous block"
    assert "merkle root" in str(check(dataclasses.replace(block, txs=block.txs[:1])))
    assert check(dataclasses.replace(block, txs=(txs[0], txs[0]))) == "duplicate tx id in block"
    assert (
        check(dataclasses.replace(block, timestamp_ms=1)) == "block hash does not match the header"
    )
    assert check(dataclasses.replace(block, proposer=9)) == "proposer 9 is not a consortium member"
    null_with_txs = dataclasses.replace(block, proposer=-1)
    assert check(null_with_txs) == "null block carries transactions"
    weak = dataclasses.replace(block, commits=block.commits[:2])
    assert check(weak) == "certificate has 2 commits, quorum is 3"
    # A transaction swapped for another with the same id but a different payload.
    swapped = TxEnvelope(txs[1].tx, b"forged payload")
    problem = check(dataclasses.replace(block, txs=(txs[0], swapped)))
    assert (
        problem is not None and problem.startswith("tx 1 (") and "payload hash mismatch" in problem
    )
    # Same block, an unregistered client: signature and certificate fine, registry refuses.
    problem = verify_block(block, GENESIS_HASH, CONSORTIUM, ClientRegistry())
    assert problem is not None and "unknown client key" in problem


def test_verify_chain_ok() -> None:
    chain = make_chain(6, null_every=3)
    report = verify_chain(chain, CONSORTIUM, REGISTRY)
    assert report.ok and report.height == 6 and report.head_hash == chain[-1].block_hash
    assert report.first_bad_height is None and report.reason is None
    empty = verify_chain([], CONSORTIUM, REGISTRY)
    assert empty.ok and empty.height == 0 and empty.head_hash == GENESIS_HASH


def test_verify_chain_reports_first_bad_block() -> None:
    chain = make_chain(5)
    gap = verify_chain(chain[:2] + chain[3:], CONSORTIUM, REGISTRY)
    assert not gap.ok and gap.height == 2 and gap.head_hash == chain[1].block_hash
    assert gap.first_bad_height == 3 and gap.reason == "expected height 3, found 4"
    not_genesis = verify_chain(chain[1:], CONSORTIUM, REGISTRY)
    assert not_genesis.first_bad_height == 1 and not_genesis.height == 0
    tampered = [*chain[:3], dataclasses.replace(chain[3], timestamp_ms=5), chain[4]]
    report = verify_chain(tampered, CONSORTIUM, REGISTRY)
    assert report.first_bad_height == 4 and report.height == 3
    assert report.reason == "block hash does not match the header"


def test_a_tx_repeated_in_a_later_certified_block_is_a_counted_no_op() -> None:
    chain = make_chain(2)
    replay = chain[0].txs[1]
    b3 = block_from_committed(make_committed(3, chain[1].block_hash, [make_tx(99), replay]))
    report = verify_chain([*chain, b3], CONSORTIUM, REGISTRY)
    assert report.ok and report.height == 3 and report.duplicate_txs == 1


def test_every_single_byte_change_of_an_encoded_block_is_detected() -> None:
    """Header, tx fields, payloads, signatures, certificate: flip any byte, decode or verify
    catches it."""
    txs = [make_tx(30, payload=b"abc"), make_tx(31, client=1, payload=b"de")]
    block = block_from_committed(make_committed(1, GENESIS_HASH, txs, view=1, proposer=1))
    data = encode_block(block)
    assert verify_block(decode_block(data), GENESIS_HASH, CONSORTIUM, REGISTRY) is None
    undetected = []
    for pos in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            flipped = bytearray(data)
            flipped[pos] ^= mask
            try:
                candidate = decode_block(bytes(flipped))
            except CodecError:
                continue
            if verify_block(candidate, GENESIS_HASH, CONSORTIUM, REGISTRY) is None:
                undetected.append((pos, mask))
    assert undetected == []


# -- LedgerApp ----------------------------------------------------------------------------------


class FakeIndex:
    def __init__(self) -> None:
        self.committed: set[bytes] = set()

    def committed_among(self, tx_ids: Sequence[bytes]) -> set[bytes]:
        return {t for t in tx_ids if t in self.committed}


def _batch(envs: list[TxEnvelope]) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    return tuple(e.tx_id for e in envs), tuple(encode_tx(e) for e in envs)


def test_ledger_app_checks_and_caches() -> None:
    app = LedgerApp(FakeIndex(), REGISTRY)
    envs = [make_tx(40), make_tx(41, client=1)]
    admitted = app.admit(encode_tx(envs[0]))
    assert admitted == envs[0]
    ids, raws = _batch(envs)
    assert app.check_txs(ids, raws) is None
    assert (app.cache_hits, app.cache_misses) == (1, 1)  # envs[0] verified at admission
    assert app.check_txs(ids, raws) is None
    assert (app.cache_hits, app.cache_misses) == (3, 1)


def test_ledger_app_cache_is_keyed_by_the_exact_bytes() -> None:
    app = LedgerApp(FakeIndex(), REGISTRY)
    env = make_tx(42)
    app.admit(encode_tx(env))
    forged = encode_tx(TxEnvelope(env.tx, b"other payload"))
    problem = app.check_txs((env.tx_id,), (forged,))
    assert problem is not None and "payload hash mismatch" in problem


def test_ledger_app_reasons() -> None:
    app = LedgerApp(FakeIndex(), REGISTRY)
    a, b = make_tx(43), make_tx(44)
    assert app.check_txs((a.tx_id,), ()) == "1 tx ids but 0 txs"
    assert app.check_txs((a.tx_id, a.tx_id), (encode_tx(a),) * 2) == "duplicate tx id in batch"
    problem = app.check_txs((a.tx_id,), (encode_tx(b),))
    assert problem is not None and problem.endswith("tx does not match its id")
    problem = app.check_txs((a.tx_id,), (b"\x93",))
    assert problem is not None and "not valid msgpack" in problem
    with pytest.raises(LedgerError, match="unknown client key"):
        LedgerApp(FakeIndex(), ClientRegistry()).admit(encode_tx(a))
    with pytest.raises(LedgerError, match="not valid msgpack"):
        app.admit(b"\xc1")


def test_ledger_app_cache_is_bounded() -> None:
    app = LedgerApp(FakeIndex(), REGISTRY, cache_size=2)
    envs = [make_tx(50 + i) for i in range(3)]
    for env in envs:
        app.admit(encode_tx(env))
    ids, raws = _batch(envs)
    assert app.check_txs(ids[1:], raws[1:]) is None
    assert (app.cache_hits, app.cache_misses) == (2, 0)
    assert app.check_txs(ids[:1], raws[:1]) is None
    assert (app.cache_hits, app.cache_misses) == (2, 1)  # the oldest was evicted: verified again
    with pytest.raises(ValueError):
        LedgerApp(FakeIndex(), REGISTRY, cache_size=0)


def test_ledger_app_committed_among_uses_the_store() -> None:
    index = FakeIndex()
    app = LedgerApp(index, REGISTRY)
    env = make_tx(60)
    assert not app.committed_among([env.tx_id])
    index.committed.add(env.tx_id)
    assert app.committed_among([env.tx_id]) == {env.tx_id}
