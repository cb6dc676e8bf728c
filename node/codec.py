"""Wire encoding of consensus messages: msgpack frames ``[tag, field, ...]``.

Decoding is strict and total: whatever bytes a peer sends, :func:`decode_message` either returns
a well-typed message or raises :class:`CodecError` naming the first problem found, never any
other exception. Structural rules (types, exact sizes, arities, integer ranges, length bounds)
are enforced here, so the consensus core only ever sees messages whose fields have the types
its dataclasses declare. Protocol rules (is the sender the primary, is the signature valid, is
the seq inside the watermarks) are the core's.

Nested values (the batch inside a pre-prepare, the checkpoints inside a view-change, ...) are
untagged arrays: their type is fixed by their position. Only the top-level frame carries a tag.

The ``expect_*`` helpers and :func:`unpack` / :func:`pack` are shared with ``node/ledger`` and
the HTTP API so every decoder in the node follows the same rules and error style.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import msgpack

from consensus.messages import (
    NO_PROPOSER,
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
    Suspect,
    ViewChange,
)

MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
"""Largest frame accepted (and produced). A full batch is ~1 MiB, a fetch response a few."""
MAX_ITEMS: Final = 100_000
"""Longest array anywhere in a frame (tx ids of a batch, blocks of a fetch response, ...)."""
MAX_REPLICAS: Final = 1024
"""Replica ids are 0..MAX_REPLICAS-1; also bounds per-replica lists (certificates, proofs)."""
MAX_STR_BYTES: Final = 4096
"""Longest msgpack str accepted by :func:`unpack` (consensus frames carry none at all)."""
MAX_UINT: Final = (1 << 63) - 1
"""Views, seqs and timestamps fit a signed 64-bit integer (SQLite INTEGER, 8-byte chain link)."""
MAX_DEPTH: Final = 16
"""Deepest array nesting accepted (a new-view's batch tx ids are 8 deep). msgpack itself stops
at 1024 levels (StackError) and builds at most one object per input byte; :func:`unpack`
checks the rest on the decoded value."""
DIGEST_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64


class CodecError(ValueError):
    """Malformed input: ``reason`` says what is wrong and where."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# generic msgpack helpers (shared by ledger and api)


def pack(obj: object) -> bytes:
    """msgpack with bin for bytes and str for text; tuples and lists both become arrays."""
    try:
        data: bytes = msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise CodecError(f"cannot encode: {e}") from None
    return data


def array_header(length: int) -> bytes:
    """The msgpack header of an array of ``length`` elements (what :func:`pack` writes before
    them), so an array can be assembled from elements already encoded."""
    if length < 16:
        return bytes((0x90 | length,))
    if length < 1 << 16:
        return b"\xdc" + length.to_bytes(2, "big")
    if length < 1 << 32:
        return b"\xdd" + length.to_bytes(4, "big")
    raise CodecError(f"cannot encode: an array of {length} elements")


def _scalar_sizes() -> tuple[int, ...]:
    """Total size of each scalar msgpack value by its first byte; -1: a container, a
    length-prefixed str/bin (see :func:`check_nesting`), or a type we refuse (maps, ext)."""
    sizes = [-1] * 256
    for b in (*range(0x00, 0x80), *range(0xE0, 0x100), 0xC0, 0xC2, 0xC3):
        sizes[b] = 1  # fixints, nil, false, true
    for b in range(0xA0, 0xC0):
        sizes[b] = 1 + (b & 0x1F)  # fixstr
    for b, extra in ((0xCA, 4), (0xCB, 8), (0xCC, 1), (0xCD, 2), (0xCE, 4), (0xCF, 8)):
        sizes[b] = 1 + extra
    for b, extra in ((0xD0, 1), (0xD1, 2), (0xD2, 4), (0xD3, 8)):
        sizes[b] = 1 + extra
    return tuple(sizes)


_SCALAR: Final = _scalar_sizes()
_LENGTH_PREFIXED: Final = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}
_ARRAY_PREFIXED: Final = {0xDC: 2, 0xDD: 4}


def check_nesting(data: bytes, max_depth: int = MAX_DEPTH, what: str = "frame") -> None:
    """Refuse (CodecError) msgpack whose arrays nest deeper than ``max_depth``, or that holds a
    map, an ext type or a reserved byte, by walking the bytes: nothing is allocated, str and
    bin payloads are skipped by their length, and each step consumes at least one byte, so the
    walk is linear in the input. Truncation and trailing bytes are left to :func:`unpack`."""
    n = len(data)
    i = 0
    remaining = 1
    stack: list[int] = []
    scalar = _SCALAR
    while remaining or stack:
        if not remaining:
            remaining = stack.pop()
            continue
        if i >= n:
            return  # truncated: msgpack reports it
        b = data[i]
        remaining -= 1
        size = scalar[b]
        if size > 0:
            i += size
            continue
        if 0x90 <= b <= 0x9F or b in _ARRAY_PREFIXED:
            width = _ARRAY_PREFIXED.get(b, 0)
            count = (b & 0x0F) if not width else int.from_bytes(data[i + 1 : i + 1 + width])
            i += 1 + width
            stack.append(remaining)
            if len(stack) > max_depth:
                raise CodecError(f"{what}: not valid msgpack, nested too deep (over {max_depth})")
            remaining = count
            continue
        prefix = _LENGTH_PREFIXED.get(b)
        if prefix is None:
            raise CodecError(f"{what}: {_refused_type(b)}")
        i += 1 + prefix + int.from_bytes(data[i + 1 : i + 1 + prefix])


def _refused_type(b: int) -> str:
    if 0x80 <= b <= 0x8F or b in (0xDE, 0xDF):
        return "not valid msgpack here (a map; only arrays are allowed)"
    if b == 0xC1:
        return "not valid msgpack (reserved byte 0xc1)"
    return f"not valid msgpack here (ext type 0x{b:02x})"


def unpack(data: object, *, max_bytes: int = MAX_FRAME_BYTES, what: str = "frame") -> object:
    """Strictly unpack one msgpack value: arrays become tuples, maps and ext types are refused.

    Every length is bounded by msgpack itself before anything is allocated; nesting deeper than
    MAX_DEPTH, maps and ext types are refused on the decoded value (:func:`_check_decoded`: a
    C-level pass per array, where a scan of the bytes in Python cost more than msgpack itself);
    callers still check each value's type and shape.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"{what}: expected bytes, got {type(data).__name__}")
    size = len(data)
    if size == 0:
        raise CodecError(f"{what}: empty")
    if size > max_bytes:
        raise CodecError(f"{what}: {size} bytes exceeds the limit of {max_bytes}")
    try:
        value = msgpack.unpackb(
            data,
            use_list=False,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_STR_BYTES,
            max_bin_len=size,
            max_array_len=MAX_ITEMS,
            max_map_len=0,
            max_ext_len=0,
        )
    except msgpack.ExtraData:
        raise CodecError(f"{what}: trailing bytes after the msgpack value") from None
    except msgpack.StackError:
        raise CodecError(f"{what}: nested too deep") from None
    except UnicodeDecodeError:
        raise CodecError(f"{what}: a string is not valid UTF-8") from None
    except Exception as e:
        # msgpack documents "other exceptions can be raised during unpacking"; whatever the
        # input, the caller must only ever see CodecError. Only the message's type is quoted,
        # never the value, so a hostile frame cannot make our error text large.
        raise CodecError(f"{what}: not valid msgpack ({type(e).__name__}: {_short(e)})") from None
    _check_decoded(value, 1, what)
    return value


def _check_decoded(value: object, depth: int, what: str) -> None:
    """The rules :func:`check_nesting` applies to bytes, applied to a decoded value: no map or
    ext type (an empty one gets past msgpack's length limits) and arrays at most MAX_DEPTH deep.
    ``set(map(type, ...))`` runs in C, so an array of scalars (a batch's txs) costs one pass."""
    if type(value) is not tuple:
        if type(value) in _REFUSED_DECODED:
            raise CodecError(f"{what}: {_REFUSED_DECODED[type(value)]}")
        return
    kinds = set(map(type, value))
    if not kinds.isdisjoint(_REFUSED_DECODED):
        kind = next(k for k in kinds if k in _REFUSED_DECODED)
        raise CodecError(f"{what}: {_REFUSED_DECODED[kind]}")
    if tuple in kinds:
        if depth >= MAX_DEPTH:
            raise CodecError(f"{what}: not valid msgpack, nested too deep (over {MAX_DEPTH})")
        for item in value:
            if type(item) is tuple:
                _check_decoded(item, depth + 1, what)


_REFUSED_DECODED: Final[dict[type, str]] = {
    dict: "not valid msgpack here (a map; only arrays are allowed)",
    msgpack.ExtType: "not valid msgpack here (an ext type)",
}


def expect_array(
    value: object, what: str, *, arity: int | None = None, max_len: int = MAX_ITEMS
) -> tuple[Any, ...]:
    if type(value) is not tuple:
        raise CodecError(f"{what}: expected array, got {_kind(value)}")
    if arity is not None:
        if len(value) != arity:
            raise CodecError(f"{what}: expected {arity} elements, got {len(value)}")
    elif len(value) > max_len:
        raise CodecError(f"{what}: {len(value)} elements exceeds the limit of {max_len}")
    return value


def expect_int(value: object, what: str, *, lo: int = 0, hi: int = MAX_UINT) -> int:
    # type() not isinstance(): msgpack booleans decode to bool, a subclass of int.
    if type(value) is not int:
        raise CodecError(f"{what}: expected integer, got {_kind(value)}")
    if not lo <= value <= hi:
        raise CodecError(f"{what}: {value} out of range [{lo}, {hi}]")
    return value


def expect_bytes(
    value: object, what: str, *, size: int | None = None, max_len: int | None = None
) -> bytes:
    if type(value) is not bytes:
        raise CodecError(f"{what}: expected bytes, got {_kind(value)}")
    if size is not None and len(value) != size:
        raise CodecError(f"{what}: expected {size} bytes, got {len(value)}")
    if max_len is not None and len(value) > max_len:
        raise CodecError(f"{what}: {len(value)} bytes exceeds the limit of {max_len}")
    return value


def expect_str(value: object, what: str, *, max_len: int) -> str:
    if type(value) is not str:
        raise CodecError(f"{what}: expected string, got {_kind(value)}")
    if len(value) > max_len:
        raise CodecError(f"{what}: {len(value)} characters exceeds the limit of {max_len}")
    return value


def _kind(value: object) -> str:
    names = {bytes: "bytes", str: "string", int: "integer", bool: "boolean", tuple: "array"}
    return names.get(type(value), type(value).__name__)


def _short(e: BaseException, limit: int = 120) -> str:
    text = str(e)
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------------------------------
# field groups


def _digest(value: object, what: str) -> bytes:
    return expect_bytes(value, what, size=DIGEST_SIZE)


def _signature(value: object, what: str) -> bytes:
    return expect_bytes(value, what, size=SIGNATURE_SIZE)


def _replica(value: object, what: str) -> int:
    return expect_int(value, what, hi=MAX_REPLICAS - 1)


def _digest_list(value: object, what: str) -> tuple[bytes, ...]:
    items = expect_array(value, what)
    for i, d in enumerate(items):
        if type(d) is not bytes or len(d) != DIGEST_SIZE:
            _digest(d, f"{what}[{i}]")
    return items


def _bytes_list(value: object, what: str) -> tuple[bytes, ...]:
    items = expect_array(value, what)
    for i, b in enumerate(items):
        if type(b) is not bytes:
            expect_bytes(b, f"{what}[{i}]")
    return items


def _tx_lists(
    ids_raw: object, txs_raw: object, what: str, *, allow_stripped: bool = False
) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    tx_ids = _digest_list(ids_raw, f"{what}.tx_ids")
    txs = _bytes_list(txs_raw, f"{what}.txs")
    if allow_stripped and not txs:
        return tx_ids, txs  # a stripped batch (Batch.stripped): ids only, same digest
    if len(tx_ids) != len(txs):
        raise CodecError(f"{what}: {len(tx_ids)} tx ids but {len(txs)} txs")
    return tx_ids, txs


# ---------------------------------------------------------------------------------------------
# per-type raw <-> object (raw = the untagged field tuple)


def batch_to_raw(b: Batch) -> tuple[object, ...]:
    return (b.view, b.proposer, b.timestamp_ms, b.tx_ids, b.txs)


def batch_from_raw(raw: object, what: str = "batch") -> Batch:
    view, proposer, ts, ids, txs = expect_array(raw, what, arity=5)
    tx_ids, tx_bytes = _tx_lists(ids, txs, what, allow_stripped=True)
    return Batch(
        view=expect_int(view, f"{what}.view"),
        proposer=expect_int(proposer, f"{what}.proposer", lo=NO_PROPOSER, hi=MAX_REPLICAS - 1),
        timestamp_ms=expect_int(ts, f"{what}.timestamp_ms"),
        tx_ids=tx_ids,
        txs=tx_bytes,
    )


def pre_prepare_to_raw(m: PrePrepare) -> tuple[object, ...]:
    return (m.view, m.seq, m.digest, m.replica, batch_to_raw(m.batch), m.signature)


def pre_prepare_from_raw(raw: object, what: str = "PrePrepare") -> PrePrepare:
    view, seq, digest, replica, batch, sig = expect_array(raw, what, arity=6)
    return PrePrepare(
        view=expect_int(view, f"{what}.view"),
        seq=expect_int(seq, f"{what}.seq"),
        digest=_digest(digest, f"{what}.digest"),
        replica=_replica(replica, f"{what}.replica"),
        batch=batch_from_raw(batch, f"{what}.batch"),
        signature=_signature(sig, f"{what}.signature"),
    )


def prepare_to_raw(m: Prepare) -> tuple[object, ...]:
    return (m.view, m.seq, m.digest, m.replica, m.signature)


def prepare_from_raw(raw: object, what: str = "Prepare") -> Prepare:
    view, seq, digest, replica, sig = expect_array(raw, what, arity=5)
    return Prepare(
        view=expect_int(view, f"{what}.view"),
        seq=expect_int(seq, f"{what}.seq"),
        digest=_digest(digest, f"{what}.digest"),
        replica=_replica(replica, f"{what}.replica"),
        signature=_signature(sig, f"{what}.signature"),
    )


def commit_to_raw(m: Commit) -> tuple[object, ...]:
    return (m.view, m.seq, m.digest, m.replica, m.signature)


def commit_from_raw(raw: object, what: str = "Commit") -> Commit:
    view, seq, digest, replica, sig = expect_array(raw, what, arity=5)
    return Commit(
        view=expect_int(view, f"{what}.view"),
        seq=expect_int(seq, f"{what}.seq"),
        digest=_digest(digest, f"{what}.digest"),
        replica=_replica(replica, f"{what}.replica"),
        signature=_signature(sig, f"{what}.signature"),
    )


def commits_from_raw(raw: object, what: str) -> tuple[Commit, ...]:
    items = expect_array(raw, what, max_len=MAX_REPLICAS)
    return tuple(commit_from_raw(c, f"{what}[{i}]") for i, c in enumerate(items))


def checkpoint_to_raw(m: Checkpoint) -> tuple[object, ...]:
    return (m.seq, m.state_digest, m.replica, m.signature)


def checkpoint_from_raw(raw: object, what: str = "Checkpoint") -> Checkpoint:
    seq, digest, replica, sig = expect_array(raw, what, arity=4)
    return Checkpoint(
        seq=expect_int(seq, f"{what}.seq"),
        state_digest=_digest(digest, f"{what}.state_digest"),
        replica=_replica(replica, f"{what}.replica"),
        signature=_signature(sig, f"{what}.signature"),
    )


def _prepared_proof_to_raw(p: PreparedProof) -> tuple[object, ...]:
    return (pre_prepare_to_raw(p.pre_prepare), tuple(prepare_to_raw(x) for x in p.prepares))


def _prepared_proof_from_raw(raw: object, what: str) -> PreparedProof:
    pp, prepares = expect_array(raw, what, arity=2)
    items = expect_array(prepares, f"{what}.prepares", max_len=MAX_REPLICAS)
    return PreparedProof(
        pre_prepare=pre_prepare_from_raw(pp, f"{what}.pre_prepare"),
        prepares=tuple(prepare_from_raw(x, f"{what}.prepares[{i}]") for i, x in enumerate(items)),
    )


def view_change_to_raw(m: ViewChange) -> tuple[object, ...]:
    return (
        m.new_view,
        m.stable_seq,
        m.stable_digest,
        tuple(checkpoint_to_raw(c) for c in m.checkpoint_proof),
        tuple(_prepared_proof_to_raw(p) for p in m.prepared),
        m.replica,
        m.signature,
    )


def view_change_from_raw(raw: object, what: str = "ViewChange") -> ViewChange:
    new_view, stable_seq, stable_digest, proof, prepared, replica, sig = expect_array(
        raw, what, arity=7
    )
    cps = expect_array(proof, f"{what}.checkpoint_proof", max_len=MAX_REPLICAS)
    pps = expect_array(prepared, f"{what}.prepared")
    return ViewChange(
        new_view=expect_int(new_view, f"{what}.new_view"),
        stable_seq=expect_int(stable_seq, f"{what}.stable_seq"),
        stable_digest=_digest(stable_digest, f"{what}.stable_digest"),
        checkpoint_proof=tuple(
            checkpoint_from_raw(c, f"{what}.checkpoint_proof[{i}]") for i, c in enumerate(cps)
        ),
        prepared=tuple(
            _prepared_proof_from_raw(p, f"{what}.prepared[{i}]") for i, p in enumerate(pps)
        ),
        replica=_replica(replica, f"{what}.replica"),
        signature=_signature(sig, f"{what}.signature"),
    )


def new_view_to_raw(m: NewView) -> tuple[object, ...]:
    return (
        m.view,
        tuple(view_change_to_raw(v) for v in m.view_changes),
        tuple(pre_prepare_to_raw(p) for p in m.pre_prepares),
        m.replica,
        m.signature,
    )


def new_view_from_raw(raw: object, what: str = "NewView") -> NewView:
    view, vcs, pps, replica, sig = expect_array(raw, what, arity=5)
    vc_items = expect_array(vcs, f"{what}.view_changes", max_len=MAX_REPLICAS)
    pp_items = expect_array(pps, f"{what}.pre_prepares")
    return NewView(
        view=expect_int(view, f"{what}.view"),
        view_changes=tuple(
            view_change_from_raw(v, f"{what}.view_changes[{i}]") for i, v in enumerate(vc_items)
        ),
        pre_prepares=tuple(
            pre_prepare_from_raw(p, f"{what}.pre_prepares[{i}]") for i, p in enumerate(pp_items)
        ),
        replica=_replica(replica, f"{what}.replica"),
        signature=_signature(sig, f"{what}.signature"),
    )


def request_to_raw(m: Request) -> tuple[object, ...]:
    return (m.tx_ids, m.txs, m.replica)


def request_from_raw(raw: object, what: str = "Request") -> Request:
    ids, txs, replica = expect_array(raw, what, arity=3)
    tx_ids, tx_bytes = _tx_lists(ids, txs, what)
    return Request(tx_ids=tx_ids, txs=tx_bytes, replica=_replica(replica, f"{what}.replica"))


def fetch_request_to_raw(m: FetchRequest) -> tuple[object, ...]:
    return (m.from_seq, m.to_seq, m.replica)


def fetch_request_from_raw(raw: object, what: str = "FetchRequest") -> FetchRequest:
    from_seq, to_seq, replica = expect_array(raw, what, arity=3)
    lo = expect_int(from_seq, f"{what}.from_seq")
    hi = expect_int(to_seq, f"{what}.to_seq")
    if lo > hi:
        raise CodecError(f"{what}: from_seq {lo} > to_seq {hi}")
    return FetchRequest(from_seq=lo, to_seq=hi, replica=_replica(replica, f"{what}.replica"))


def certified_block_to_raw(b: CertifiedBlock) -> tuple[object, ...]:
    return (b.seq, batch_to_raw(b.batch), tuple(commit_to_raw(c) for c in b.commits))


def certified_block_from_raw(raw: object, what: str = "CertifiedBlock") -> CertifiedBlock:
    seq, batch, commits = expect_array(raw, what, arity=3)
    return CertifiedBlock(
        seq=expect_int(seq, f"{what}.seq"),
        batch=batch_from_raw(batch, f"{what}.batch"),
        commits=commits_from_raw(commits, f"{what}.commits"),
    )


def fetch_response_to_raw(m: FetchResponse) -> tuple[object, ...]:
    return (tuple(certified_block_to_raw(b) for b in m.blocks), m.replica)


def fetch_response_from_raw(raw: object, what: str = "FetchResponse") -> FetchResponse:
    blocks, replica = expect_array(raw, what, arity=2)
    items = expect_array(blocks, f"{what}.blocks")
    return FetchResponse(
        blocks=tuple(
            certified_block_from_raw(b, f"{what}.blocks[{i}]") for i, b in enumerate(items)
        ),
        replica=_replica(replica, f"{what}.replica"),
    )


def suspect_to_raw(m: Suspect) -> tuple[object, ...]:
    return (m.view, m.replica, m.signature)


def suspect_from_raw(raw: object, what: str = "Suspect") -> Suspect:
    view, replica, sig = expect_array(raw, what, arity=3)
    return Suspect(
        view=expect_int(view, f"{what}.view"),
        replica=_replica(replica, f"{what}.replica"),
        signature=_signature(sig, f"{what}.signature"),
    )


# ---------------------------------------------------------------------------------------------
# tagged frames

# Wire tags are part of the protocol: never renumber, only append.
TAGS: Final[dict[type, int]] = {
    PrePrepare: 1,
    Prepare: 2,
    Commit: 3,
    Checkpoint: 4,
    ViewChange: 5,
    NewView: 6,
    Request: 7,
    FetchRequest: 8,
    FetchResponse: 9,
    Suspect: 10,
}

_TO_RAW: Final[dict[type, Callable[[Any], tuple[object, ...]]]] = {
    PrePrepare: pre_prepare_to_raw,
    Prepare: prepare_to_raw,
    Commit: commit_to_raw,
    Checkpoint: checkpoint_to_raw,
    ViewChange: view_change_to_raw,
    NewView: new_view_to_raw,
    Request: request_to_raw,
    FetchRequest: fetch_request_to_raw,
    FetchResponse: fetch_response_to_raw,
    Suspect: suspect_to_raw,
}

_FROM_RAW: Final[dict[int, tuple[str, Callable[[object, str], Message]]]] = {
    1: ("PrePrepare", pre_prepare_from_raw),
    2: ("Prepare", prepare_from_raw),
    3: ("Commit", commit_from_raw),
    4: ("Checkpoint", checkpoint_from_raw),
    5: ("ViewChange", view_change_from_raw),
    6: ("NewView", new_view_from_raw),
    7: ("Request", request_from_raw),
    8: ("FetchRequest", fetch_request_from_raw),
    9: ("FetchResponse", fetch_response_from_raw),
    10: ("Suspect", suspect_from_raw),
}


def encode_message(msg: Message, *, max_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Frame ``msg`` as ``[tag, field, ...]``.

    Raises TypeError for a non-message, CodecError if the frame would exceed ``max_bytes``
    (peers would refuse it; a caller serving blocks should send fewer per response).
    """
    to_raw = _TO_RAW.get(type(msg))
    if to_raw is None:
        raise TypeError(f"not a consensus message: {type(msg).__name__}")
    data = pack((TAGS[type(msg)], *to_raw(msg)))
    if len(data) > max_bytes:
        raise CodecError(
            f"{type(msg).__name__} frame of {len(data)} bytes exceeds the limit of {max_bytes}"
        )
    return data


def decode_message(data: object, *, max_bytes: int = MAX_FRAME_BYTES) -> Message:
    """Parse one frame; raises CodecError (and nothing else) on any malformed input."""
    frame = unpack(data, max_bytes=max_bytes)
    if type(frame) is not tuple or not frame:
        raise CodecError(f"frame: expected a non-empty array, got {_kind(frame)}")
    tag = frame[0]
    if type(tag) is not int:
        raise CodecError(f"frame: tag must be an integer, got {_kind(tag)}")
    entry = _FROM_RAW.get(tag)
    if entry is None:
        raise CodecError(f"frame: unknown message tag {tag}")
    name, from_raw = entry
    return from_raw(frame[1:], name)
