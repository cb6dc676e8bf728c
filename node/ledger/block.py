"""Blocks and their headers: built from the core's decisions, and their binary and JSON forms.

A block is what consensus decided at one sequence number: the batch's header fields, its
transactions and the commit certificate (2f+1 signed commits from distinct replicas). Its hash is
``chain_link(height, prev_hash, batch_digest)``, exactly what the consensus core computed, so any
holder of the consortium's public keys can verify a chain offline (``node.ledger.verify``).
A header is a block without its transactions.

Forms, one encoder and one parser each: binary (:func:`encode_block` / :func:`decode_block`,
:func:`decode_block_header`), the JSON block (:func:`block_to_json` / :func:`parse_block_doc`,
strictly to a Block: :func:`block_from_json`) and the JSON header (:func:`header_to_json` /
:func:`parse_header_doc`, which also reads a whole block document as its header).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from consensus.events import Committed
from consensus.hashing import batch_digest, chain_link, merkle_root
from consensus.messages import NO_PROPOSER, Batch, CertifiedBlock, Commit
from node import codec
from node.codec import CodecError
from node.ledger.jsonform import (
    BlockJsonError,
    hex_bytes,
    json_field,
    json_hex,
    json_int,
    json_list,
    json_object,
)
from node.ledger.tx import (
    HASH_SIZE,
    SIGNATURE_SIZE,
    LedgerError,
    TxDoc,
    TxEnvelope,
    decode_tx,
    encode_tx,
    parse_tx_doc,
    tx_from_raw,
    tx_id_of,
    tx_to_json,
)

MAX_BLOCK_BYTES: Final = codec.MAX_FRAME_BYTES
BLOCK_FORMAT: Final = 1
"""Leading element of an encoded block, so a future layout (encrypted payloads) can coexist."""
_BLOCK_FIELDS: Final = 10
"""Elements of an encoded block: format, eight header fields, the txs, the certificate."""

DecodedTxs = Callable[[bytes, bytes], "TxEnvelope | None"]
"""``(tx_id, raw) -> envelope``: the already-decoded envelope of exactly ``raw``, if at hand
(``LedgerApp.take_decoded``), so a committed batch is not decoded again to build its block."""


@dataclass(frozen=True, slots=True)
class Block:
    """A committed batch at ``height`` (== consensus seq) with its commit certificate."""

    height: int
    prev_hash: bytes
    block_hash: bytes
    merkle_root: bytes
    """Merkle root over the tx ids (not the payloads: see ``node.ledger.tx``)."""
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


def block_from_committed(c: Committed, decoded: DecodedTxs | None = None) -> Block:
    """The block for a decision of the consensus core.

    Each tx is taken from ``decoded`` when it has the envelope of exactly those bytes (verified
    when admitted or checked), else decoded here. Raises LedgerError if a decoded tx does not
    match the id the batch names or the hashes do not match: the core only commits batches the
    application accepted, so this is a bug, not input.
    """
    cb = c.block
    batch = cb.batch
    if len(batch.tx_ids) != len(batch.txs):
        raise LedgerError(f"committed block {cb.seq}: tx ids and txs differ in number")
    txs: list[TxEnvelope] = []
    for i, (tx_id, raw) in enumerate(zip(batch.tx_ids, batch.txs, strict=True)):
        env = None if decoded is None else decoded(tx_id, raw)
        if env is None:
            env = _decode_committed_tx(cb.seq, i, tx_id, raw)
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


def _decode_committed_tx(seq: int, i: int, tx_id: bytes, raw: bytes) -> TxEnvelope:
    try:
        env = decode_tx(raw)
    except CodecError as e:
        raise LedgerError(f"committed block {seq}: tx {i}: {e.reason}") from None
    if env.tx_id != tx_id:
        raise LedgerError(f"committed block {seq}: tx {i} does not match its id")
    return env


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
    """msgpack of ``(BLOCK_FORMAT, height, ..., timestamp_ms, txs, commits)``.

    A msgpack array is its header followed by its elements' encodings, so each tx's own
    encoding (:func:`encode_tx`, memoised: a tx encoded at admission is not packed again) is
    spliced in as it stands; the bytes are those of packing the whole tuple at once.
    """
    head = codec.pack(
        (
            BLOCK_FORMAT,
            block.height,
            block.prev_hash,
            block.block_hash,
            block.merkle_root,
            block.view,
            block.proposer,
            block.timestamp_ms,
        )
    )
    return b"".join(
        (
            codec.array_header(_BLOCK_FIELDS),
            head[len(codec.array_header(8)) :],
            codec.array_header(len(block.txs)),
            *(encode_tx(env) for env in block.txs),
            codec.pack(tuple(codec.commit_to_raw(c) for c in block.commits)),
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
        txs=tuple(tx_from_raw(t, f"block.txs[{i}]") for i, t in enumerate(tx_items)),
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


@dataclass(frozen=True, slots=True)
class HeaderDoc:
    """A header in its JSON form, parsed for structure only: the header as the document states
    it, and the digest it claims (not yet compared with the one its fields give)."""

    header: BlockHeader
    claimed_digest: bytes


@dataclass(frozen=True, slots=True)
class BlockDoc:
    """A block in its JSON form, parsed for structure only (see :func:`parse_block_doc`)."""

    head: HeaderDoc
    """Its header fields; ``head.header.tx_count`` is ``len(txs)``."""
    txs: tuple[TxDoc, ...]

    def to_block(self, what: str = "block") -> Block:
        """The Block, if every payload was served and every claimed tx id is its tx's own;
        BlockJsonError naming the first tx that is not."""
        h = self.head.header
        return Block(
            height=h.height,
            prev_hash=h.prev_hash,
            block_hash=h.block_hash,
            merkle_root=h.merkle_root,
            view=h.view,
            proposer=h.proposer,
            timestamp_ms=h.timestamp_ms,
            txs=tuple(_envelope(t, f"{what}.txs[{i}]") for i, t in enumerate(self.txs)),
            commits=h.commits,
        )


def _envelope(doc: TxDoc, what: str) -> TxEnvelope:
    if doc.payload is None:
        raise BlockJsonError(f"{what}.payload: served without its payload (ask with payload=1)")
    env = TxEnvelope(tx=doc.tx, payload=doc.payload)
    if env.tx_id != doc.claimed_id:
        raise BlockJsonError(f"{what}.tx_id: does not match the transaction")
    return env


def parse_header_doc(doc: object, *, what: str = "header") -> HeaderDoc:
    """Strictly parse ``header_to_json`` output (a whole ``block_to_json`` document parses too:
    its txs are not read, ``tx_count`` stands for them). BlockJsonError naming the first bad
    field by its path from ``what``. Structure only (types, sizes, bounds): validity (digest,
    block hash, certificate) is for ``node.ledger.verify`` or the audit to judge."""
    d = json_object(doc, what)
    tx_count = json_int(d, "tx_count", what, hi=codec.MAX_ITEMS)
    cert = json_list(json_field(d, "certificate", what), f"{what}.certificate", codec.MAX_REPLICAS)
    header = BlockHeader(
        height=json_int(d, "height", what, lo=1),
        prev_hash=json_hex(d, "prev_hash", what, HASH_SIZE),
        block_hash=json_hex(d, "hash", what, HASH_SIZE),
        merkle_root=json_hex(d, "merkle_root", what, HASH_SIZE),
        view=json_int(d, "view", what),
        proposer=json_int(d, "proposer", what, lo=NO_PROPOSER, hi=codec.MAX_REPLICAS - 1),
        timestamp_ms=json_int(d, "timestamp_ms", what),
        tx_count=tx_count,
        commits=tuple(_parse_commit_doc(c, f"{what}.certificate[{i}]") for i, c in enumerate(cert)),
        tx_ids=_parse_tx_ids(d, what, tx_count),
    )
    return HeaderDoc(header, json_hex(d, "digest", what, HASH_SIZE))


def parse_block_doc(
    doc: object, *, what: str = "block", require_payloads: bool = False
) -> BlockDoc:
    """Strictly parse ``block_to_json`` output; BlockJsonError naming the first bad field.
    Structure only, as :func:`parse_header_doc`: the claimed tx ids and the payloads (optional)
    are kept beside the transactions for the caller to check. With ``require_payloads``, each
    tx as it is read must carry its payload and its own tx id (:meth:`BlockDoc.to_block`)."""
    head = parse_header_doc(doc, what=what)
    d = json_object(doc, what)
    items = json_list(json_field(d, "txs", what), f"{what}.txs", codec.MAX_ITEMS)
    txs = []
    for i, item in enumerate(items):
        tx_doc = parse_tx_doc(item, f"{what}.txs[{i}]")
        if require_payloads:
            _envelope(tx_doc, f"{what}.txs[{i}]")
        txs.append(tx_doc)
    if head.header.tx_count != len(txs):
        raise BlockJsonError(
            f"{what}.tx_count: says {head.header.tx_count} but {len(txs)} txs were served"
        )
    return BlockDoc(head, tuple(txs))


def block_from_json(doc: object) -> Block:
    """Inverse of ``block_to_json(block, include_payload=True)``: :func:`parse_block_doc` with
    every payload present and every served tx id matching its transaction; anything else
    raises BlockJsonError. Validity (signatures, certificate, links) is ``verify_chain``'s."""
    return parse_block_doc(doc, require_payloads=True).to_block()


def _parse_commit_doc(doc: object, what: str) -> Commit:
    d = json_object(doc, what)
    return Commit(
        view=json_int(d, "view", what),
        seq=json_int(d, "seq", what),
        digest=json_hex(d, "digest", what, HASH_SIZE),
        replica=json_int(d, "replica", what, hi=codec.MAX_REPLICAS - 1),
        signature=json_hex(d, "signature", what, SIGNATURE_SIZE),
    )


def _parse_tx_ids(d: Mapping[str, Any], what: str, tx_count: int) -> tuple[bytes, ...] | None:
    raw = d.get("tx_ids")
    if raw is None:
        return None
    items = json_list(raw, f"{what}.tx_ids", codec.MAX_ITEMS)
    if len(items) != tx_count:
        raise BlockJsonError(f"{what}.tx_ids: {len(items)} ids for {tx_count} txs")
    ids = []
    for i, item in enumerate(items):
        if type(item) is not str or len(item) != 2 * HASH_SIZE:
            raise BlockJsonError(f"{what}.tx_ids[{i}]: expected {2 * HASH_SIZE} hex characters")
        ids.append(hex_bytes(item, f"{what}.tx_ids[{i}]"))
    return tuple(ids)
