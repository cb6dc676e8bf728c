"""Blocks and headers (node.ledger.block): from the core's decisions, binary and JSON forms."""

from __future__ import annotations

import dataclasses
import json

import pytest

import node.ledger.block as block_mod
from consensus.hashing import GENESIS_HASH, chain_link, merkle_root
from consensus.messages import NULL_BATCH
from node import codec
from node.codec import CodecError
from node.ledger import (
    BLOCK_FORMAT,
    HARD_MAX_PAYLOAD_BYTES,
    Block,
    BlockJsonError,
    LedgerError,
    TxEnvelope,
    block_from_committed,
    block_header,
    block_to_certified,
    block_to_json,
    decode_block,
    decode_block_header,
    encode_block,
    encode_tx,
    header_to_json,
    parse_block_doc,
    parse_header_doc,
    tx_to_raw,
    verify_block,
)
from tests.unit.helpers_ledger import (
    CONSORTIUM,
    REGISTRY,
    make_chain,
    make_committed,
    make_tx,
)

# -- blocks -------------------------------------------------------------------------------------


def test_golden_chain_head() -> None:
    head = make_chain(3)[-1].block_hash
    assert head.hex() == "52f16233d3bead6007542e1c5dc3066b74c39729d8380975b15c77697da13731"


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


# -- the JSON forms' one parser -----------------------------------------------------------------


def test_header_doc_round_trip_with_and_without_tx_ids() -> None:
    for block in make_chain(3, null_every=2):
        for header in (block_header(block), block_header(block, with_tx_ids=True)):
            doc = json.loads(json.dumps(header_to_json(header)))
            parsed = parse_header_doc(doc)
            assert parsed.header == header and parsed.claimed_digest == block.digest
        # A whole block document reads as its header (without tx ids: the form has none).
        assert parse_header_doc(block_to_json(block), what="block").header == block_header(block)


def test_block_doc_keeps_the_claims_for_the_caller_to_check() -> None:
    block = make_chain(1)[0]
    light = parse_block_doc(block_to_json(block))
    assert [t.payload for t in light.txs] == [None, None]
    assert [t.claimed_id for t in light.txs] == list(block.tx_ids)
    assert light.head.header == block_header(block)
    with pytest.raises(BlockJsonError, match=r"^block\.txs\[0\]\.payload: served without"):
        light.to_block()
    doc = block_to_json(block, include_payload=True)
    doc["txs"][1]["tx_id"] = "00" * 32
    lying = parse_block_doc(doc)  # structure only: the lie is kept, not judged
    assert lying.txs[1].claimed_id == bytes(32)
    with pytest.raises(BlockJsonError, match=r"^block\.txs\[1\]\.tx_id: does not match"):
        lying.to_block()
    with pytest.raises(BlockJsonError, match=r"^block\.txs\[1\]\.tx_id"):
        parse_block_doc(doc, require_payloads=True)


BAD_FIELDS: list[tuple[str, object, str]] = [
    ("height", 0, r"^block\.height: expected an integer >= 1$"),
    ("height", True, r"^block\.height: expected an integer"),
    ("view", -1, r"^block\.view: expected an integer >= 0$"),
    ("proposer", 1024, r"^block\.proposer: expected an integer in -1\.\.1023$"),
    ("tx_count", 100_001, r"^block\.tx_count: expected an integer in 0\.\.100000$"),
    ("tx_count", 1, r"^block\.tx_count: says 1 but 2 txs were served$"),
    ("hash", "ab" * 31 + " a", r"^block\.hash: not valid hex$"),
    ("hash", " " + "ab" * 31 + " ", r"^block\.hash: not valid hex$"),
    ("merkle_root", "ab", r"^block\.merkle_root: expected 64 hex characters$"),
    ("certificate", {}, r"^block\.certificate: expected an array, got dict$"),
    ("certificate", [0] * 1025, r"^block\.certificate: 1025 elements exceeds the limit"),
    ("txs", list(range(100_001)), r"^block\.txs: 100001 elements exceeds the limit"),
    ("txs", [[]], r"^block\.txs\[0\]: expected an object, got list$"),
]


@pytest.mark.parametrize(("key", "value", "match"), BAD_FIELDS)
def test_block_doc_errors_name_the_field(key: str, value: object, match: str) -> None:
    doc = block_to_json(make_chain(1)[0], include_payload=True)
    doc[key] = value
    with pytest.raises(BlockJsonError, match=match):
        parse_block_doc(doc)


def test_tx_and_commit_fields_are_bounded_and_named() -> None:
    doc = block_to_json(make_chain(1)[0], include_payload=True)
    cases: list[tuple[str, object, str]] = [
        ("patient", "", r"^block\.txs\[1\]\.patient: expected a printable string of 1\.\.128"),
        ("hospital", "h\n", r"^block\.txs\[1\]\.hospital: expected a printable string"),
        ("payload", "abc", r"^block\.txs\[1\]\.payload: expected hex$"),
        ("payload", "zz", r"^block\.txs\[1\]\.payload: not valid hex$"),
        ("payload", "00" * (HARD_MAX_PAYLOAD_BYTES + 1), r"^block\.txs\[1\]\.payload: \d+ bytes"),
        ("nonce", 5, r"^block\.txs\[1\]\.nonce: expected 32 hex characters$"),
    ]
    for key, value, match in cases:
        bad = json.loads(json.dumps(doc))
        bad["txs"][1][key] = value
        with pytest.raises(BlockJsonError, match=match):
            parse_block_doc(bad)
    missing = json.loads(json.dumps(doc))
    del missing["txs"][0]["signature"]
    with pytest.raises(BlockJsonError, match=r"^block\.txs\[0\]: missing field 'signature'$"):
        parse_block_doc(missing)
    bad_replica = json.loads(json.dumps(doc))
    bad_replica["certificate"][2]["replica"] = 1024
    with pytest.raises(BlockJsonError, match=r"^block\.certificate\[2\]\.replica: expected"):
        parse_block_doc(bad_replica)


def test_header_doc_tx_ids_are_checked_for_shape() -> None:
    doc = header_to_json(block_header(make_chain(1)[0], with_tx_ids=True))
    for value, match in (
        (["00" * 32], r"^header\.tx_ids: 1 ids for 2 txs$"),
        (["00" * 32, "zz" * 32], r"^header\.tx_ids\[1\]: not valid hex$"),
        (["00" * 32, 7], r"^header\.tx_ids\[1\]: expected 64 hex characters$"),
        ("00", r"^header\.tx_ids: expected an array, got str$"),
    ):
        with pytest.raises(BlockJsonError, match=match):
            parse_header_doc({**doc, "tx_ids": value})
    with pytest.raises(BlockJsonError, match=r"^header: expected an object, got list$"):
        parse_header_doc([doc])


def _packed_whole(block: Block) -> bytes:
    """The block packed as one tuple, every tx re-packed from its fields."""
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
            tuple(tx_to_raw(env) for env in block.txs),
            tuple(codec.commit_to_raw(c) for c in block.commits),
        )
    )


@pytest.mark.parametrize("count", [0, 1, 15, 16, 17, 300])
def test_encode_block_splices_each_tx_encoding_byte_for_byte(count: int) -> None:
    txs = [make_tx(900 + i) for i in range(count)] if count else None
    block = block_from_committed(make_committed(1, GENESIS_HASH, txs))
    assert encode_block(block) == _packed_whole(block)
    fresh = decode_block(encode_block(block))  # envelopes not encoded yet
    assert encode_block(fresh) == _packed_whole(block)


def test_block_from_committed_takes_decoded_envelopes_for_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    envs = [make_tx(950 + i) for i in range(3)]
    committed = make_committed(1, GENESIS_HASH, envs)
    batch = committed.block.batch
    known = {env.tx_id: (bytes(raw), env) for env, raw in zip(envs[:2], batch.txs[:2], strict=True)}
    known[envs[1].tx_id] = (encode_tx(make_tx(999)), envs[1])  # other bytes: not handed out
    asked: list[bytes] = []

    def decoded(tx_id: bytes, raw: bytes) -> TxEnvelope | None:
        asked.append(tx_id)
        entry = known.get(tx_id)
        return entry[1] if entry is not None and entry[0] == raw else None

    decodes: list[object] = []
    real_decode = block_mod.decode_tx
    monkeypatch.setattr(block_mod, "decode_tx", lambda d: decodes.append(d) or real_decode(d))
    block = block_from_committed(committed, decoded)
    assert asked == [env.tx_id for env in envs]
    assert decodes == list(batch.txs[1:])  # only the two it did not have
    assert block == block_from_committed(committed)
    assert block.txs[0] is envs[0]
