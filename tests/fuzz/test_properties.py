"""Property tests: every decoder and validator takes any input and returns a valid value or
raises its own clean error, never another exception (hypothesis).

Valid values are also generated (round trips), so a decoder that refused everything would fail.
"""

from __future__ import annotations

import contextlib
import json
import tomllib
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.messages import Commit, Prepare
from node import codec
from node.audit.evidence import EvidenceError, evidence_from_json
from node.codec import CodecError
from node.config import ConfigError, parse_config
from node.crypto import generate_keypair
from node.faults.model import FaultError, parse_fault
from node.http import BadRequest, json_depth_exceeds, parse_hex, parse_json, parse_uint
from node.ledger import (
    BlockJsonError,
    LedgerError,
    decode_block,
    decode_block_header,
    decode_tx,
    encode_tx,
    make_transaction,
    parse_block_doc,
    parse_header_doc,
    parse_tx_doc,
    tx_to_json,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SECRET, PUBLIC = generate_keypair(b"\x07" * 32)

# msgpack values as a peer could send them (arrays nest, all scalar kinds).
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    st.binary(max_size=70),
    st.text(max_size=20),
    st.floats(allow_nan=True),
)
packed_values = st.recursive(_scalars, lambda kids: st.lists(kids, max_size=8), max_leaves=40)
# JSON documents, including the shapes our parsers expect with wrong leaves.
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20), st.floats()),
    lambda kids: st.one_of(
        st.lists(kids, max_size=6), st.dictionaries(st.text(max_size=12), kids, max_size=6)
    ),
    max_leaves=40,
)
frame_like = st.builds(
    lambda tag, rest: msgpack.packb([tag, *rest], use_bin_type=True),
    st.integers(min_value=0, max_value=12),
    st.lists(packed_values, max_size=8),
)


def _mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    """Byte flips, truncations and splices of a valid encoding."""
    return st.one_of(
        st.integers(min_value=0, max_value=max(0, len(valid) - 1)).map(lambda i: valid[:i]),
        st.tuples(st.integers(min_value=0, max_value=len(valid) - 1), st.integers(0, 255)).map(
            lambda p: valid[: p[0]] + bytes([p[1]]) + valid[p[0] + 1 :]
        ),
        st.binary(max_size=40).map(lambda b: valid + b),
    )


# ---------------------------------------------------------------------------------------------
# binary decoders


@FAST
@given(st.one_of(st.binary(max_size=300), frame_like))
def test_decode_message_any_bytes(data: bytes) -> None:
    try:
        msg = codec.decode_message(data)
    except CodecError:
        return
    assert codec.decode_message(codec.encode_message(msg)) == msg


VALID_FRAMES = [
    codec.encode_message(Prepare(3, 7, b"\x01" * 32, 2, b"\x02" * 64)),
    codec.encode_message(Commit(3, 7, b"\x01" * 32, 2, b"\x02" * 64)),
]


@FAST
@given(st.sampled_from(VALID_FRAMES).flatmap(_mutations))
def test_decode_message_mutated_frames(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        codec.decode_message(data)


@FAST
@given(st.one_of(st.binary(max_size=300), packed_values.map(lambda v: msgpack.packb(v))))
def test_unpack_and_nesting_scan_any_bytes(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        codec.check_nesting(data, 4)
    with contextlib.suppress(CodecError):
        codec.unpack(data)


@FAST
@given(st.integers(1, 40))
def test_nesting_scan_agrees_with_depth(depth: int) -> None:
    data = b"\x91" * depth + b"\x00"
    if depth > codec.MAX_DEPTH:
        with pytest.raises(CodecError, match="nested too deep"):
            codec.unpack(data)
    else:
        codec.unpack(data)


def _tx(i: int) -> bytes:
    env = make_transaction(
        SECRET, "hospital-0", f"p{i}", "lab", f"x{i}".encode(), record_id=f"r{i}"
    )
    return encode_tx(env)


VALID_TX = _tx(1)


@FAST
@given(st.one_of(st.binary(max_size=400), _mutations(VALID_TX), frame_like))
def test_decode_tx_any_bytes(data: bytes) -> None:
    try:
        env = decode_tx(data)
    except CodecError:
        return
    assert decode_tx(encode_tx(env)) == env


@FAST
@given(st.one_of(st.binary(max_size=400), frame_like))
def test_decode_block_and_header_any_bytes(data: bytes) -> None:
    for decode in (decode_block, decode_block_header):
        with contextlib.suppress(CodecError, LedgerError):
            decode(data)


# ---------------------------------------------------------------------------------------------
# JSON forms: transactions, blocks, headers, evidence records, faults (admin requests)

VALID_TX_DOC = tx_to_json(decode_tx(VALID_TX), include_payload=True)


def _with_bad_field(doc: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.tuples(st.sampled_from(sorted(doc)), json_values).map(
        lambda kv: {**doc, kv[0]: kv[1]}
    )


@FAST
@given(st.one_of(json_values, _with_bad_field(VALID_TX_DOC)))
def test_parse_tx_doc_any_json(doc: object) -> None:
    with contextlib.suppress(BlockJsonError):
        parse_tx_doc(doc, "tx")


@FAST
@given(json_values)
def test_parse_block_and_header_docs_any_json(doc: object) -> None:
    for parse in (parse_block_doc, parse_header_doc):
        with contextlib.suppress(BlockJsonError):
            parse(doc)


@FAST
@given(json_values)
def test_evidence_records_any_json(doc: object) -> None:
    with contextlib.suppress(EvidenceError):
        evidence_from_json(doc)


@FAST
@given(json_values)
def test_fault_specs_any_json(doc: object) -> None:
    with contextlib.suppress(FaultError):
        parse_fault(doc, n=4)


# ---------------------------------------------------------------------------------------------
# HTTP parameter parsing and JSON bodies


@FAST
@given(st.text(max_size=30))
def test_parse_uint_any_text(text: str) -> None:
    try:
        value = parse_uint(text, "x")
    except BadRequest as e:
        assert e.status == 400
        return
    assert text.isascii() and 0 <= value < 1 << 63 and int(text) == value


@FAST
@given(st.text(max_size=70))
def test_parse_hex_any_text(text: str) -> None:
    try:
        raw = parse_hex(text, 32, "id")
    except ValueError:
        return
    assert raw.hex() == text.lower()


@FAST
@given(st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode())))
def test_parse_json_any_bytes(body: bytes) -> None:
    try:
        parse_json(body, max_bytes=1000, max_depth=5)
    except BadRequest as e:
        assert 400 <= e.status < 500


@FAST
@given(json_values)
def test_json_depth_check_matches_real_depth(doc: object) -> None:
    def depth(v: object) -> int:
        if isinstance(v, list):
            return 1 + max(map(depth, v), default=0)
        if isinstance(v, dict):
            return 1 + max(map(depth, v.values()), default=0)
        return 0

    assert json_depth_exceeds(json.dumps(doc).encode(), 3) == (depth(doc) > 3)


# ---------------------------------------------------------------------------------------------
# config parsing

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "example-4"


def _example_doc() -> dict[str, Any]:
    path = sorted(EXAMPLE.glob("*.toml"))[0]
    return tomllib.loads(path.read_text())


@FAST
@given(st.one_of(json_values, st.just(_example_doc()).flatmap(_with_bad_field)))
def test_parse_config_any_document(doc: object) -> None:
    with contextlib.suppress(ConfigError):
        parse_config(doc if isinstance(doc, dict) else {"node": doc}, base_dir=Path("/tmp"))
