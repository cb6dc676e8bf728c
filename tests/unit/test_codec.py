from __future__ import annotations

import contextlib
import hashlib

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.messages import (
    NULL_BATCH,
    Batch,
    CertifiedBlock,
    Checkpoint,
    Commit,
    FetchRequest,
    FetchResponse,
    Message,
    NewView,
    Prepare,
    PreparedProof,
    PrePrepare,
    Request,
    ViewChange,
)
from node.codec import (
    MAX_DEPTH,
    MAX_FRAME_BYTES,
    MAX_REPLICAS,
    MAX_UINT,
    CodecError,
    array_header,
    decode_message,
    encode_message,
    expect_str,
    pack,
    unpack,
)

# -- strategies ---------------------------------------------------------------------------------

uints = st.integers(min_value=0, max_value=MAX_UINT)
small = st.integers(min_value=0, max_value=1000)
replicas = st.integers(min_value=0, max_value=MAX_REPLICAS - 1)
digests = st.binary(min_size=32, max_size=32)
sigs = st.binary(min_size=64, max_size=64)


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    n = draw(st.integers(min_value=0, max_value=4))
    return Batch(
        view=draw(uints),
        proposer=draw(st.integers(min_value=-1, max_value=MAX_REPLICAS - 1)),
        timestamp_ms=draw(uints),
        tx_ids=tuple(draw(st.lists(digests, min_size=n, max_size=n))),
        txs=tuple(draw(st.lists(st.binary(max_size=40), min_size=n, max_size=n))),
    )


pre_prepares = st.builds(
    PrePrepare, view=uints, seq=uints, digest=digests, replica=replicas, batch=batches(),
    signature=sigs,
)  # fmt: skip
prepares = st.builds(
    Prepare, view=uints, seq=uints, digest=digests, replica=replicas, signature=sigs
)
commits = st.builds(Commit, view=uints, seq=uints, digest=digests, replica=replicas, signature=sigs)
checkpoints = st.builds(
    Checkpoint, seq=uints, state_digest=digests, replica=replicas, signature=sigs
)
proofs = st.builds(
    PreparedProof,
    pre_prepare=pre_prepares,
    prepares=st.lists(prepares, max_size=3).map(tuple),
)
view_changes = st.builds(
    ViewChange,
    new_view=uints,
    stable_seq=uints,
    stable_digest=digests,
    checkpoint_proof=st.lists(checkpoints, max_size=3).map(tuple),
    prepared=st.lists(proofs, max_size=2).map(tuple),
    replica=replicas,
    signature=sigs,
)
new_views = st.builds(
    NewView,
    view=uints,
    view_changes=st.lists(view_changes, max_size=2).map(tuple),
    pre_prepares=st.lists(pre_prepares, max_size=2).map(tuple),
    replica=replicas,
    signature=sigs,
)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    n = draw(st.integers(min_value=0, max_value=4))
    return Request(
        tx_ids=tuple(draw(st.lists(digests, min_size=n, max_size=n))),
        txs=tuple(draw(st.lists(st.binary(max_size=40), min_size=n, max_size=n))),
        replica=draw(replicas),
    )


@st.composite
def fetch_requests(draw: st.DrawFn) -> FetchRequest:
    lo = draw(uints)
    hi = draw(st.integers(min_value=lo, max_value=MAX_UINT))
    return FetchRequest(from_seq=lo, to_seq=hi, replica=draw(replicas))


certified = st.builds(
    CertifiedBlock, seq=uints, batch=batches(), commits=st.lists(commits, max_size=4).map(tuple)
)
fetch_responses = st.builds(
    FetchResponse, blocks=st.lists(certified, max_size=3).map(tuple), replica=replicas
)
messages: st.SearchStrategy[Message] = st.one_of(
    pre_prepares,
    prepares,
    commits,
    checkpoints,
    view_changes,
    new_views,
    requests(),
    fetch_requests(),
    fetch_responses,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_round_trip(msg: Message) -> None:
    data = encode_message(msg)
    assert decode_message(data) == msg
    assert encode_message(decode_message(data)) == data  # encoding is canonical


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode_message(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.data())
def test_mutated_frames_only_raise_codec_error(msg: Message, data: st.DataObject) -> None:
    frame = bytearray(encode_message(msg))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        i = data.draw(st.integers(min_value=0, max_value=len(frame) - 1))
        frame[i] = data.draw(st.integers(min_value=0, max_value=255))
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(min_value=0, max_value=len(frame)))
        frame = frame[:cut]
    with contextlib.suppress(CodecError):
        decode_message(bytes(frame))


# Leaves of every msgpack type (and small arrays and maps of them): grafted anywhere into a valid
# frame they exercise each "wrong type at this position" branch of the decoders.
msgpack_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=5)
    | st.binary(max_size=70)
)
msgpack_values = (
    msgpack_leaves
    | st.lists(msgpack_leaves, max_size=6)
    | st.dictionaries(st.text(max_size=3), msgpack_leaves, max_size=2)
)


def _graft(tree: object, data: st.DataObject) -> object:
    """Replace one randomly chosen node of a nested-list tree with an arbitrary value."""
    if not isinstance(tree, list) or not tree or data.draw(st.integers(0, 3)) == 0:
        return data.draw(msgpack_values)
    i = data.draw(st.integers(min_value=0, max_value=len(tree) - 1))
    return [*tree[:i], _graft(tree[i], data), *tree[i + 1 :]]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.data())
def test_grafted_garbage_only_raises_codec_error(msg: Message, data: st.DataObject) -> None:
    tree = msgpack.unpackb(encode_message(msg), use_list=True)
    frame = msgpack.packb(_graft(tree, data), use_bin_type=True)
    with contextlib.suppress(CodecError):
        decode_message(frame)


# -- golden values: a change to any canonical form must be deliberate ---------------------------

D = bytes(range(32))
S = bytes(range(64))
BATCH = Batch(
    view=1,
    proposer=2,
    timestamp_ms=1_700_000_000_000,
    tx_ids=(bytes([7]) * 32,),
    txs=(b"tx-bytes",),
)
PP = PrePrepare(view=1, seq=5, digest=BATCH.digest(), replica=1, batch=BATCH, signature=S)
PREP = Prepare(view=1, seq=5, digest=D, replica=2, signature=S)
COMMIT = Commit(view=1, seq=5, digest=D, replica=3, signature=S)
CP = Checkpoint(seq=32, state_digest=D, replica=0, signature=S)
VC = ViewChange(
    new_view=2,
    stable_seq=32,
    stable_digest=D,
    checkpoint_proof=(CP,),
    prepared=(PreparedProof(PP, (PREP,)),),
    replica=3,
    signature=S,
)
NV = NewView(view=2, view_changes=(VC,), pre_prepares=(PP,), replica=2, signature=S)

D_HEX = D.hex()
S_HEX = S.hex()


def test_golden_batch_digest() -> None:
    assert (
        BATCH.digest().hex() == "ddacfc9686087d0c22c3045ef4d18be4b120795a7a94b30b09ff6dbf17f3a6b8"
    )


@pytest.mark.parametrize(
    ("msg", "signing_hex", "frame_hex"),
    [
        (
            PP,
            "6d6564636861696e2f7072652d7072657061726500940105c420"
            "ddacfc9686087d0c22c3045ef4d18be4b120795a7a94b30b09ff6dbf17f3a6b8" + "01",
            "97010105c420ddacfc9686087d0c22c3045ef4d18be4b120795a7a94b30b09ff6dbf17f3a6b801"
            "950102cf0000018bcfe5680091c420" + "07" * 32 + "91c40874782d6279746573c440" + S_HEX,
        ),
        (
            PREP,
            "6d6564636861696e2f7072657061726500940105c420" + D_HEX + "02",
            "96020105c420" + D_HEX + "02c440" + S_HEX,
        ),
        (
            COMMIT,
            "6d6564636861696e2f636f6d6d697400940105c420" + D_HEX + "03",
            "96030105c420" + D_HEX + "03c440" + S_HEX,
        ),
        (
            CP,
            "6d6564636861696e2f636865636b706f696e74009320c420" + D_HEX + "00",
            "950420c420" + D_HEX + "00c440" + S_HEX,
        ),
    ],
)
def test_golden_signing_bytes_and_frames(msg: Message, signing_hex: str, frame_hex: str) -> None:
    assert msg.signing_bytes().hex() == signing_hex  # type: ignore[union-attr]
    assert encode_message(msg).hex() == frame_hex


@pytest.mark.parametrize(
    ("msg", "signing_sha", "frame_sha"),
    [
        (
            VC,
            "f81c00cd85b84712953b299f3db29648d14be8102dbaa1f2cc17c255207809f4",
            "bbc7fb41b2654340449db87c552e166c5f20381193db9f7bbff876c8e252a8fc",
        ),
        (
            NV,
            "76cbeedf62d4af80239b202dc2da9be34ded51d80b1b614cccf6db40f3905dc6",
            "f70750da85263abb0d5ccb99595608b04ab5c6928c70e08c27803d375aac2eeb",
        ),
    ],
)
def test_golden_view_change_forms(
    msg: ViewChange | NewView, signing_sha: str, frame_sha: str
) -> None:
    assert hashlib.sha256(msg.signing_bytes()).hexdigest() == signing_sha
    assert hashlib.sha256(encode_message(msg)).hexdigest() == frame_sha


# -- specific rejections --------------------------------------------------------------------------


def _frame(*fields: object) -> bytes:
    return bytes(msgpack.packb(list(fields), use_bin_type=True))


BATCH_RAW = [1, 2, 1_700_000_000_000, [bytes(32)], [b"tx"]]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"\xc1", "not valid msgpack"),
        (b"\x96\x02\x01", "not valid msgpack"),  # truncated
        (_frame(2, 1, 5, D, 2, S) + b"\x00", "trailing bytes"),
        (b"\x91" * 2000 + b"\x00", "nested too deep"),
        (msgpack.packb({"a": 1}), "not valid msgpack"),  # maps are never valid
        (msgpack.packb(msgpack.ExtType(1, b"x")), "not valid msgpack"),
        (_frame(), "non-empty array"),
        (msgpack.packb(5), "non-empty array"),
        (_frame("prepare", 1, 5, D, 2, S), "tag must be an integer"),
        (_frame(99, 1, 5, D, 2, S), "unknown message tag 99"),
        (_frame(0), "unknown message tag 0"),
        (_frame(2, 1, 5, D, 2), "Prepare: expected 5 elements, got 4"),
        (_frame(2, 1, 5, D, 2, S, 0), "Prepare: expected 5 elements, got 6"),
        (_frame(2, 1, -5, D, 2, S), r"Prepare.seq: -5 out of range"),
        (_frame(2, 1, 2**63, D, 2, S), r"Prepare.seq: .* out of range"),
        (_frame(2, True, 5, D, 2, S), "Prepare.view: expected integer, got boolean"),
        (_frame(2, 1.0, 5, D, 2, S), "Prepare.view: expected integer, got float"),
        (_frame(2, 1, 5, D.hex(), 2, S), "Prepare.digest: expected bytes, got string"),
        (_frame(2, 1, 5, D[:31], 2, S), "Prepare.digest: expected 32 bytes, got 31"),
        (_frame(2, 1, 5, D, 2, S[:63]), "Prepare.signature: expected 64 bytes, got 63"),
        (_frame(2, 1, 5, D, 2, b""), "Prepare.signature: expected 64 bytes, got 0"),
        (_frame(2, 1, 5, D, MAX_REPLICAS, S), "Prepare.replica: 1024 out of range"),
        (_frame(2, 1, 5, D, None, S), "Prepare.replica: expected integer, got NoneType"),
        (_frame(1, 1, 5, D, 1, [1, 2, 3], S), "PrePrepare.batch: expected 5 elements"),
        (
            _frame(1, 1, 5, D, 1, [1, -2, 0, [], []], S),
            r"PrePrepare.batch.proposer: -2 out of range",
        ),
        (
            _frame(1, 1, 5, D, 1, [1, 2, 0, [bytes(32)] * 2, [b"x"]], S),
            "PrePrepare.batch: 2 tx ids but 1 txs",
        ),
        (
            _frame(1, 1, 5, D, 1, [1, 2, 0, [bytes(31)], [b"x"]], S),
            r"PrePrepare.batch.tx_ids\[0\]: expected 32 bytes",
        ),
        (
            _frame(1, 1, 5, D, 1, [1, 2, 0, [bytes(32)], ["x"]], S),
            r"PrePrepare.batch.txs\[0\]: expected bytes, got string",
        ),
        (_frame(1, 1, 5, D, 1, BATCH_RAW, S[:10]), "PrePrepare.signature"),
        (_frame(8, 10, 5, 1), "FetchRequest: from_seq 10 > to_seq 5"),
        (_frame(9, [[1, BATCH_RAW, [[1, 1, D, 0, S[:1]]]]], 0), r"blocks\[0\].commits\[0\]"),
        (_frame(9, [[1, BATCH_RAW, [[1, 1, D, 0, S]] * 1025]], 0), "exceeds the limit of 1024"),
        (
            _frame(5, 2, 0, D, [], [[[1, 5, D, 1, BATCH_RAW, S], "x"]], 3, S),
            r"ViewChange.prepared\[0\].prepares: expected array, got string",
        ),
        (
            _frame(6, 2, [[2, 0, D, [[1, D, 0, S[:2]]], [], 3, S]], [], 2, S),
            r"NewView.view_changes\[0\].checkpoint_proof\[0\].signature",
        ),
        (_frame(7, [bytes(32)] * 2, [b"a"], 0), "Request: 2 tx ids but 1 txs"),
        (_frame(2, 1, 5, b"\xff" * 32, 2, S)[:-1] + b"", "not valid msgpack"),
        (msgpack.packb([2, 1, 5, "\udcff", 2, S], unicode_errors="surrogatepass"), "UTF-8"),
    ],
)
def test_rejections_name_the_problem(data: bytes, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        decode_message(data)


def test_oversize_frames_are_refused() -> None:
    big = Request(tx_ids=(bytes(32),), txs=(bytes(2000),), replica=0)
    data = encode_message(big)
    assert decode_message(data, max_bytes=len(data)) == big
    with pytest.raises(CodecError, match="exceeds the limit"):
        decode_message(data, max_bytes=len(data) - 1)
    with pytest.raises(CodecError, match="exceeds the limit"):
        encode_message(big, max_bytes=1000)
    with pytest.raises(CodecError, match="exceeds the limit"):
        decode_message(b"\x00" * (MAX_FRAME_BYTES + 1))


def test_array_length_is_bounded_before_allocation() -> None:
    # An array header claiming 2**32-1 elements must fail fast, not allocate.
    with pytest.raises(CodecError, match="not valid msgpack"):
        decode_message(b"\xdd\xff\xff\xff\xff" + b"\x00" * 10)


@pytest.mark.parametrize("data", [None, "text", 5, [1, 2]])
def test_non_bytes_input(data: object) -> None:
    with pytest.raises(CodecError, match="expected bytes"):
        decode_message(data)


def test_bytearray_and_memoryview_input() -> None:
    data = encode_message(PREP)
    assert decode_message(bytearray(data)) == PREP
    assert decode_message(memoryview(data)) == PREP


def test_null_batch_round_trips() -> None:
    pp = PrePrepare(
        view=0, seq=1, digest=NULL_BATCH.digest(), replica=0, batch=NULL_BATCH, signature=S
    )
    assert decode_message(encode_message(pp)) == pp


def test_encode_refuses_non_messages() -> None:
    with pytest.raises(TypeError, match="not a consensus message"):
        encode_message(BATCH)  # type: ignore[arg-type]


def test_generic_helpers() -> None:
    assert unpack(pack((1, b"x", "y"))) == (1, b"x", "y")
    with pytest.raises(CodecError, match="cannot encode"):
        pack(object())
    with pytest.raises(CodecError, match="field: 4 characters exceeds the limit of 3"):
        expect_str("abcd", "field", max_len=3)
    with pytest.raises(CodecError, match="blob: trailing bytes"):
        unpack(b"\x01\x02", what="blob")


def test_stripped_batches_round_trip_with_the_same_digest() -> None:
    """View-change and new-view messages carry committed batches without their transactions."""
    from consensus.messages import Batch, PrePrepare

    full = Batch(1, 2, 3, (bytes(32), bytes([1]) * 32), (b"a", b"b"))
    stripped = full.stripped()
    pp = PrePrepare(1, 5, full.digest(), 2, stripped, b"\x01" * 64)
    back = decode_message(encode_message(pp))
    assert isinstance(back, PrePrepare)
    assert back.batch.is_stripped and back.batch.digest() == full.digest()


@pytest.mark.parametrize("length", [0, 1, 15, 16, 65535, 65536, 70000])
def test_array_header_is_what_pack_writes_before_the_elements(length: int) -> None:
    assert pack([1] * length) == array_header(length) + b"\x01" * length


@pytest.mark.parametrize(
    ("data", "match"),
    [
        # msgpack's own limits let these through (an empty map, a zero-length ext, nesting
        # under its 1024-level stack): the check on the decoded value must refuse them.
        (b"\x80", "a map"),
        (msgpack.packb([1, [2, {}]]), "a map"),
        (b"\x92\x01\xc7\x00\x01", "an ext type"),
        (b"\x91" * (MAX_DEPTH + 1) + b"\x00", r"nested too deep \(over 16\)"),
        (b"\x92\x00" + b"\x91" * MAX_DEPTH + b"\x00", "nested too deep"),
        (b"\x91" * 1100 + b"\x00", "nested too deep"),
    ],
)
def test_unpack_refuses_what_msgpack_limits_let_through(data: bytes, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        unpack(data)
    assert unpack(b"\x91" * MAX_DEPTH + b"\x00") is not None
